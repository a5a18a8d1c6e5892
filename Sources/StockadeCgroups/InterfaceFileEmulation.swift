/// What the kernel does to a cgroupfs directory that a plain directory does not: make the interface files
/// on `mkdir`, and drop them on `rmdir`.
///
/// Only for testing a driver against a fake cgroupfs tree in a temporary directory. The drivers never
/// tolerate a missing interface file (a missing file means a missing controller, and the run must not
/// start); instead the test supplies this emulation, which creates the files a kernel would (with the
/// kernel's initial contents) right after the driver's `mkdir`, and deletes them right before its `rmdir`.
/// Production drivers have none; it is `package`, so nothing outside this package can set it.
package struct InterfaceFileEmulation: Sendable {
    package var populate: @Sendable (_ directory: String) -> Void
    package var depopulate: @Sendable (_ directory: String) -> Void

    package init(populate: @escaping @Sendable (String) -> Void, depopulate: @escaping @Sendable (String) -> Void) {
        self.populate = populate
        self.depopulate = depopulate
    }
}
