//! The metrics of a member's SIP endpoint, registered in one place and
//! shared (cheap clones) by the parts that count: the endpoint, the B2BUA
//! and failover.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use voicecluster_telemetry::metrics::register_all;

use voicecluster_telemetry::metrics::Labels;

/// SIP metrics of a signal node.
#[derive(Clone)]
pub struct SipMetrics {
    pub(crate) requests: Family<Labels, Counter>,
    pub(crate) responses: Family<Labels, Counter>,
    pub(crate) rejected: Family<Labels, Counter>,
    pub(crate) registered_users: Gauge,
    pub(crate) transactions: Gauge,
    pub(crate) calls_active: Gauge,
    pub(crate) calls_completed: Family<Labels, Counter>,
    pub(crate) call_media_packets: Family<Labels, Counter>,
    pub(crate) bill_write_errors: Counter,
    pub(crate) session_request_delay: Histogram,
    pub(crate) dtmf_digits: Counter,
    pub(crate) leg_reports: Counter,
    pub(crate) leg_fraction_lost: Histogram,
    pub(crate) leg_jitter: Histogram,
    pub(crate) replicas_held: Gauge,
    pub(crate) takeovers: Counter,
    pub(crate) takeovers_waiting: Counter,
    pub(crate) moves: Counter,
    pub(crate) taken_over: Counter,
    pub(crate) replica_timeouts: Counter,
}

impl Default for SipMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            responses: Family::default(),
            rejected: Family::default(),
            registered_users: Gauge::default(),
            transactions: Gauge::default(),
            calls_active: Gauge::default(),
            calls_completed: Family::default(),
            call_media_packets: Family::default(),
            bill_write_errors: Counter::default(),
            dtmf_digits: Counter::default(),
            leg_reports: Counter::default(),
            replicas_held: Gauge::default(),
            takeovers: Counter::default(),
            takeovers_waiting: Counter::default(),
            moves: Counter::default(),
            taken_over: Counter::default(),
            replica_timeouts: Counter::default(),
            leg_fraction_lost: Histogram::new([0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
            // 1 ms to about half a second.
            leg_jitter: Histogram::new(exponential_buckets(0.001, 2.0, 10)),
            // 1 ms to about 33 s: a local answer to a slow PSTN gateway.
            session_request_delay: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl SipMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        m.register_sip(registry);
        m.register_calls(registry);
        m.register_failover(registry);
        m
    }

    /// Messages, transactions and registrations.
    fn register_sip(&self, registry: &mut Registry) {
        let m = self;
        register_all(
            registry,
            &[
                (
                    "voicecluster_sip_requests",
                    "SIP requests received, by method",
                    &m.requests,
                ),
                (
                    "voicecluster_sip_responses_sent",
                    "SIP responses sent by the transaction user, by status code",
                    &m.responses,
                ),
                (
                    "voicecluster_sip_rejected",
                    "Malformed messages, by outcome (answered with a 4xx/5xx, or dropped)",
                    &m.rejected,
                ),
                (
                    "voicecluster_sip_registered_users",
                    "Users with at least one live registration on this member",
                    &m.registered_users,
                ),
                (
                    "voicecluster_sip_transactions",
                    "Open SIP transactions",
                    &m.transactions,
                ),
                (
                    "voicecluster_sip_session_request_delay_seconds",
                    "Session request delay (RFC 6076 SRD) of INVITEs sent to callees",
                    &m.session_request_delay,
                ),
            ],
        );
    }

    /// Calls, their media and their bills.
    fn register_calls(&self, registry: &mut Registry) {
        let m = self;
        register_all(
            registry,
            &[
                (
                    "voicecluster_calls_active",
                    "Calls in progress on this member",
                    &m.calls_active,
                ),
                (
                    "voicecluster_calls_completed",
                    "Calls ended on this member, by outcome (answered, or the refusal's status code, cancelled)",
                    &m.calls_completed,
                ),
                (
                    "voicecluster_bill_write_errors",
                    "Bills that could not be written at once (kept and retried)",
                    &m.bill_write_errors,
                ),
                (
                    "voicecluster_dtmf_digits",
                    "DTMF digits (RFC 4733) the call legs reported",
                    &m.dtmf_digits,
                ),
                (
                    "voicecluster_call_leg_reports",
                    "Statistics reports the call legs of answered calls sent",
                    &m.leg_reports,
                ),
                (
                    "voicecluster_call_leg_fraction_lost",
                    "Fraction of packets lost, as endpoints report it in RTCP, per leg report",
                    &m.leg_fraction_lost,
                ),
                (
                    "voicecluster_call_leg_jitter_seconds",
                    "Interarrival jitter endpoints report in RTCP (8 kHz audio), per leg report",
                    &m.leg_jitter,
                ),
                (
                    "voicecluster_call_media_packets",
                    "RTP packets relayed in ended calls, by direction",
                    &m.call_media_packets,
                ),
            ],
        );
    }

    /// Replicas, takeovers and moves.
    fn register_failover(&self, registry: &mut Registry) {
        let m = self;
        register_all(
            registry,
            &[
                (
                    "voicecluster_call_replicas_held",
                    "Calls of other members this member holds replicas of, as their buddy",
                    &m.replicas_held,
                ),
                (
                    "voicecluster_call_takeovers",
                    "Calls of a failed member this member took over from their replicas",
                    &m.takeovers,
                ),
                (
                    "voicecluster_call_moves",
                    "Calls taken from a live member because the edges now send their dialogs here (the member set changed after a takeover)",
                    &m.moves,
                ),
                (
                    "voicecluster_call_takeovers_awaiting_approval",
                    "Requests for calls of a failed member refused (503) because the takeover awaits approval (Manual failover)",
                    &m.takeovers_waiting,
                ),
                (
                    "voicecluster_call_replica_timeouts",
                    "Answers sent without the buddy's confirmation that it holds the call's replica",
                    &m.replica_timeouts,
                ),
                (
                    "voicecluster_calls_taken_over",
                    "Calls of this member that another member took over",
                    &m.taken_over,
                ),
            ],
        );
    }

    pub(crate) fn count(family: &Family<Labels, Counter>, key: &str, value: String) {
        family.get_or_create(&vec![(key.to_string(), value)]).inc();
    }

    /// The counter of bills that could not be written at once.
    pub fn bill_write_errors(&self) -> Counter {
        self.bill_write_errors.clone()
    }

    /// Sets `gauge` to a count.
    pub(crate) fn set(gauge: &Gauge, n: usize) {
        gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A response the transaction user sent.
    pub(crate) fn response(&self, r: &rsipstack::sip::Response) {
        Self::count(&self.responses, "code", r.status_code().code().to_string());
    }

    /// A leg's statistics report; call quality comes from its endpoint's
    /// RTCP, when it sends any.
    pub(crate) fn leg_statistics(&self, stats: &voicecluster_api::grpc::LegStats) {
        self.leg_reports.inc();
        if stats.rtcp_in > 0 {
            self.leg_fraction_lost
                .observe(f64::from(stats.fraction_lost) / 256.0);
            // G.711 and telephone-event: 8000 timestamp units a second.
            self.leg_jitter.observe(f64::from(stats.jitter) / 8000.0);
        }
    }
}
