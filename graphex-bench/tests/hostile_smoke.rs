//! The hostile scenario (issue 15) at a tiny size: a few inputs, each just
//! past a default limit, must each be refused, and the legitimate client
//! must receive every change meanwhile (no time is asserted).

#![allow(unreachable_pub)]

use graphex_bench::scenarios::{self, Options, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_and_the_legitimate_client_loses_nothing() {
    let inputs =
        ["sse-aliases", "data-list", "body-chunked", "text-plain", "operation-id", "enum-strings", "fragment-bomb"];
    let options = Options {
        hostile_rate: 50.0,
        hostile_secs: 0.3,
        // Each size falls to just past the default limit it meets.
        hostile_scale: 0.0001,
        hostile_inputs: inputs.iter().map(|key| (*key).to_owned()).collect(),
        hostile_timeout_secs: 20.0,
        settle_secs: 1.0,
        server_exe: Some(env!("CARGO_BIN_EXE_graphex-bench").into()),
        ..Options::default()
    };
    let report = scenarios::run(Scenario::Hostile, &options).await.unwrap();
    println!("{}", scenarios::table(&report));
    assert_eq!(report.runs.len(), inputs.len(), "one run per input");
    for run in &report.runs {
        assert_eq!(run.refused, Some(true), "{}: not refused: {:?}", run.variant, run.answer);
        assert!(run.expected > 0, "{}: the legitimate client was sent nothing", run.variant);
        assert!(run.lossless(), "{}: the legitimate client lost changes: {run:?}", run.variant);
        assert!(run.peak_growth_kib.is_some(), "{}: peak resident memory read", run.variant);
    }
    let answer = |key: &str| {
        let index = inputs.iter().position(|input| *input == key).unwrap();
        report.runs[index].answer.clone().unwrap_or_default()
    };
    assert!(answer("body-chunked").starts_with("HTTP 413"), "{}", answer("body-chunked"));
    assert!(answer("text-plain").starts_with("HTTP 415"), "{}", answer("text-plain"));
    // Just past the alias limit, the one-root-field rule of subscriptions
    // refuses it first; either way in the SSE format it asked for.
    assert!(answer("sse-aliases").starts_with("SSE 200 "), "{}", answer("sse-aliases"));
    assert!(report.checks.iter().any(|check| check.name.starts_with("deliveries lost") && check.met));
}
