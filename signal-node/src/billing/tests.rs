use super::*;

fn table() -> RateTable {
    let spec: BillingSpec = serde_json::from_value(serde_json::json!({
        "currency": "EUR",
        "rates": [
            {"prefix": "", "pricePerMinute": "0.02", "incrementSeconds": 60},
            {"prefix": "33", "pricePerMinute": "0.01", "incrementSeconds": 1},
            {"prefix": "+3361", "pricePerMinute": "0.3", "incrementSeconds": 30},
        ],
    }))
    .unwrap();
    RateTable::from_spec(&spec).unwrap()
}

#[test]
fn prices_parse_exactly() {
    assert_eq!(parse_price("0.02"), Ok(20_000));
    assert_eq!(parse_price("12"), Ok(12_000_000));
    assert_eq!(parse_price("0.000001"), Ok(1));
    for bad in ["", ".5", "1.2345678", "1e3", "-1", "x"] {
        assert!(parse_price(bad).is_err(), "{bad}");
    }
    assert_eq!(format_micros(20_000), "0.02");
    assert_eq!(format_micros(0), "0.00");
    assert_eq!(format_micros(1_234_567), "1.234567");
    assert_eq!(format_micros(5_000_000), "5.00");
}

#[test]
fn the_longest_prefix_and_its_increment_apply() {
    let t = table();
    // Default rate, per started minute: 61 s is 2 minutes.
    let p = t.price("4930123", Duration::from_secs(61));
    assert_eq!(
        (p.prefix.as_deref(), p.billed_seconds, p.cost_micros),
        (Some(""), 120, 40_000)
    );
    // France per second: 61.2 s is 62 s at 0.01/min.
    let p = t.price("33123456", Duration::from_millis(61_200));
    assert_eq!((p.prefix.as_deref(), p.billed_seconds), (Some("33"), 62));
    assert_eq!(format_micros(p.cost_micros), "0.010333");
    // The longest prefix wins, with or without "+".
    let p = t.price("+33612345", Duration::from_secs(10));
    assert_eq!(
        (p.prefix.as_deref(), p.billed_seconds, p.cost_micros),
        (Some("3361"), 30, 150_000)
    );
    // A call of zero length costs nothing.
    assert_eq!(t.price("33", Duration::ZERO).cost_micros, 0);
}

#[test]
fn bills_use_answer_to_end_and_unanswered_calls_cost_nothing() {
    let t = table();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let answered = CallRecord {
        call_id: "c1".into(),
        caller: "alice".into(),
        callee: "bob".into(),
        started: start,
        answered: Some(start + Duration::from_secs(3)),
        ended: start + Duration::from_secs(93),
        reason: "caller-bye".into(),
    };
    let b = bill(&answered, &t);
    assert_eq!(
        (b.duration_ms, b.billed_seconds, b.cost.as_str()),
        (90_000, 120, "0.04")
    );
    assert_eq!(b.currency, "EUR");
    assert_eq!(b.start, "2027-01-15T08:00:00Z");
    let missed = CallRecord {
        answered: None,
        reason: "486".into(),
        ..answered
    };
    let b = bill(&missed, &t);
    assert_eq!(
        (b.duration_ms, b.cost.as_str(), b.answer),
        (0, "0.00", None)
    );
}

#[test]
fn the_store_survives_a_restart_and_a_torn_line() {
    let dir = std::env::temp_dir().join(format!("vc-bills-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("bills.jsonl");
    let record = |id: &str, end: u64| CallRecord {
        call_id: id.into(),
        caller: "a".into(),
        callee: "b".into(),
        started: SystemTime::UNIX_EPOCH,
        answered: None,
        ended: SystemTime::UNIX_EPOCH + Duration::from_secs(end),
        reason: "480".into(),
    };
    {
        let mut s = BillStore::open(&path).unwrap();
        s.append(bill(&record("c1", 10), &table())).unwrap();
        s.append(bill(&record("c2", 20), &table())).unwrap();
    }
    // A crash in the middle of the next write.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"callId\":\"c3\",\"cal").unwrap();
    drop(f);
    let s = BillStore::open(&path).unwrap();
    assert_eq!(s.get("c1").map(|b| b.end_unix_ms), Some(10_000));
    assert!(s.get("c3").is_none());
    assert_eq!(s.since(15_000).len(), 1);
    assert_eq!(s.since(0).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

fn flat(price: &str) -> RateTable {
    RateTable::from_config(&voicecluster_api::grpc::BillingConfig {
        currency: "EUR".into(),
        rates: vec![voicecluster_api::grpc::RateConfig {
            prefix: String::new(),
            price_per_minute: price.into(),
            increment_seconds: 60,
        }],
    })
    .unwrap()
}

#[test]
fn a_call_is_priced_with_the_rates_in_force_when_it_was_answered() {
    let dir = std::env::temp_dir().join(format!("vc-rates-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = std::sync::Arc::new(std::sync::Mutex::new(
        BillStore::open(&dir.join("bills.jsonl")).unwrap(),
    ));
    let mut w = BillWriter::new(
        flat("0.01"),
        std::sync::Arc::clone(&store),
        Default::default(),
    );
    let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s);
    w.set_rates(t(100), flat("0.05"));
    let call = |id: &str, answered: u64| CallRecord {
        call_id: id.into(),
        caller: "alice".into(),
        callee: "bob".into(),
        started: t(answered - 1),
        answered: Some(t(answered)),
        ended: t(answered + 30),
        reason: "caller-bye".into(),
    };
    // Answered before the change, ended after it: the old price.
    w.record(&call("before", 90));
    w.record(&call("after", 110));
    let store = store.lock().unwrap();
    assert_eq!(store.get("before").unwrap().price_per_minute, "0.01");
    assert_eq!(store.get("after").unwrap().price_per_minute, "0.05");
    // A rate table the operator never makes is refused with the reason.
    let bad = RateTable::from_config(&voicecluster_api::grpc::BillingConfig {
        currency: "EUR".into(),
        rates: vec![voicecluster_api::grpc::RateConfig {
            prefix: "49".into(),
            price_per_minute: "1e3".into(),
            increment_seconds: 60,
        }],
    });
    assert!(bad.unwrap_err().contains("1e3"));
    let _ = std::fs::remove_dir_all(&dir);
}
