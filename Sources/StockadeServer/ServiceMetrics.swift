import Prometheus
import StockadeSupervisor

/// The service's counters and histograms (swift-prometheus), published by `/metrics` after the
/// gauges `Metrics.text` computes at each scrape. They count from the service's start.
final class ServiceMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()

    // Computed: MetricNameDescriptor is not Sendable, so it cannot be a stored static.
    static var runs: MetricNameDescriptor {
        .init(metricName: "stockade_runs", unitName: "total", helpText: "Runs this service submitted that finished, by outcome.")
    }
    static var violations: MetricNameDescriptor {
        .init(metricName: "stockade_violations", unitName: "total",
              helpText: "Policy violations in the reports of finished runs, by kind (each report entry's count).")
    }
    static var requests: MetricNameDescriptor {
        .init(metricName: "stockade_api_requests", unitName: "total", helpText: "API calls answered, by route template, method and status.")
    }
    static var runDuration: MetricNameDescriptor {
        .init(metricName: "stockade_run_duration", unitName: "seconds", helpText: "Wall-clock duration of finished runs (the report's durationMs).")
    }
    static var auditWrite: MetricNameDescriptor {
        .init(metricName: "stockade_audit_write", unitName: "seconds",
              helpText: "Latency of each audit ledger write transaction in this service (every append, committed or failed).")
    }

    private let runDurations: DurationHistogram
    private let auditWrites: DurationHistogram

    init() {
        runDurations = registry.makeDurationHistogram(descriptor: Self.runDuration, buckets: [
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
            .seconds(30), .seconds(60), .seconds(300), .seconds(1800), .seconds(3600),
        ])
        auditWrites = registry.makeDurationHistogram(descriptor: Self.auditWrite, buckets: [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5), .milliseconds(5),
            .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1), .seconds(10),
        ])
    }

    func runFinished(_ report: RunReport) {
        registry.makeCounter(descriptor: Self.runs, labels: [("outcome", report.outcome.rawValue)]).increment()
        runDurations.record(.milliseconds(report.durationMs))
        for violation in report.violations {
            registry.makeCounter(descriptor: Self.violations, labels: [("kind", violation.kind)]).increment(by: Int64(max(1, violation.count)))
        }
    }

    func request(route: String, method: String, status: Int) {
        registry.makeCounter(descriptor: Self.requests, labels: [("route", route), ("method", method), ("status", String(status))]).increment()
    }

    func auditWrite(_ duration: Duration) {
        auditWrites.record(duration)
    }

    var text: String { registry.emitToString() }
}
