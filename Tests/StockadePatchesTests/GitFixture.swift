/// `git diff --cached -M --binary` output from git 2.39 for a tree with every kind of change, captured
/// once; the tab after the quoted `+++` name is git's (it marks a name with a space).
let gitFixture = #"""
diff --git a/a.txt b/a.txt
index 4cb29ea..a9beb14 100644
--- a/a.txt
+++ b/a.txt
@@ -1,3 +1,3 @@
 one
-two
-three
+TWO
+three
\ No newline at end of file
diff --git a/b.bin b/b.bin
new file mode 100644
index 0000000000000000000000000000000000000000..88768efdf77ec78c9a995f94881793be6a41752b
GIT binary patch
literal 5
McmZQzOv=my00M6TI{*Lx

literal 0
HcmV?d00001

diff --git a/deep/er/n.txt b/deep/er/n.txt
new file mode 100644
index 0000000..3e75765
--- /dev/null
+++ b/deep/er/n.txt
@@ -0,0 +1 @@
+new
diff --git a/gone.txt b/gone.txt
deleted file mode 100644
index 587be6b..0000000
--- a/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-x
diff --git a/m.sh b/m.sh
old mode 100644
new mode 100755
diff --git a/r.txt b/moved dir.txt
similarity index 100%
rename from r.txt
rename to moved dir.txt
diff --git "a/\303\251 x.txt" "b/\303\251 x.txt"
new file mode 100644
index 0000000..572eb43
--- /dev/null
+++ "b/\303\251 x.txt"	
@@ -0,0 +1 @@
+café

"""#
