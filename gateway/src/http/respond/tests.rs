//! The codes and statuses of every error and outcome, held against the README.

use super::*;
use crate::decode::EventType;

use std::collections::BTreeSet;
use std::path::Path;

/// One value of every variant of the enums whose codes this file lists. The matches have
/// no `_` arm: a new variant does not compile until it is named there and added to `all`.
fn event_samples() -> Vec<EventError> {
    use EventError::*;
    let all = vec![
        NotAnObject,
        InvalidType("x".into()),
        MissingIdentity,
        MissingEvent,
        MissingGroupId,
        MissingPreviousId,
        MissingUserId,
        InvalidField { field: "context", expected: "must be an object" },
        InvalidTimestamp { field: "timestamp" },
        TooLarge { size: 2, limit: 1 },
        InvalidConsent("x".into()),
        InvalidJson { member: "properties".into(), reason: crate::decode::Unfit::TooDeep },
    ];
    all.iter().for_each(|e| match e {
        NotAnObject
        | InvalidType(_)
        | MissingIdentity
        | MissingEvent
        | MissingGroupId
        | MissingPreviousId
        | MissingUserId
        | InvalidField { .. }
        | InvalidTimestamp { .. }
        | TooLarge { .. }
        | InvalidConsent(_)
        | InvalidJson { .. } => {}
    });
    all
}

/// Every whole-body variant of [`DecodeError`] (not `Event`: see [`event_samples`]).
fn decode_samples() -> Vec<DecodeError> {
    use DecodeError::*;
    let all = vec![
        UnsupportedEncoding("br".into()),
        PayloadTooLarge { what: "request body", limit: 1 },
        TooManyEvents { count: 2, limit: 1 },
        BodyTimeout(1),
        BodyRead("x".into()),
        InvalidGzip("x".into()),
        InvalidJson { offset: 1, detail: "x".into() },
        InvalidBody("x"),
    ];
    all.iter().for_each(|e| match e {
        UnsupportedEncoding(_)
        | PayloadTooLarge { .. }
        | TooManyEvents { .. }
        | BodyTimeout(_)
        | BodyRead(_)
        | InvalidGzip(_)
        | InvalidJson { .. }
        | InvalidBody(_) => {}
        Event(_) => unreachable!("event errors are in event_samples"),
    });
    all
}

fn publish_samples() -> Vec<PublishError> {
    use PublishError::*;
    let all = vec![
        QueueFull,
        Timeout,
        Unavailable("x".into()),
        Fatal("x".into()),
        TooLarge { size: 2, limit: 1 },
        ShuttingDown,
    ];
    all.iter().for_each(|e| match e {
        QueueFull | Timeout | Unavailable(_) | Fatal(_) | TooLarge { .. } | ShuttingDown => {}
    });
    all
}

/// Every [`Error`] the request path can end with, one per variant of every stage enum.
fn error_samples() -> Vec<Error> {
    let mut all: Vec<Error> = Vec::new();
    all.extend(AuthError::samples().into_iter().map(Error::Auth));
    all.extend(decode_samples().into_iter().map(Error::Decode));
    all.extend(event_samples().into_iter().map(|e| Error::Decode(DecodeError::Event(e))));
    all.extend(AccessError::samples().into_iter().map(Error::Access));
    all.extend(ImportError::samples().into_iter().map(Error::Import));
    all.extend(publish_samples().into_iter().map(Error::Publish));
    all.push(Error::NotFound("/x".into()));
    all.push(Error::MethodNotAllowed { method: "GET".into(), path: "/v1/t".into(), allowed: "POST, OPTIONS" });
    all.iter().for_each(|e| match e {
        Error::Auth(_)
        | Error::Decode(_)
        | Error::Access(_)
        | Error::Publish(_)
        | Error::Import(_)
        | Error::NotFound(_)
        | Error::MethodNotAllowed { .. } => {}
    });
    all
}

fn set<'a>(codes: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
    codes.into_iter().collect()
}

#[test]
fn each_code_list_is_what_its_mapping_returns() {
    assert_eq!(set(event_samples().iter().map(EventError::code)), set(EVENT_CODES.iter().copied()));
    let whole_body = decode_samples().into_iter().map(|d| Error::Decode(d).code()).collect::<Vec<_>>();
    assert_eq!(set(whole_body), set(DECODE_CODES.iter().copied()));
    assert_eq!(set(publish_samples().iter().map(publish_code)), set(PUBLISH_CODES.iter().copied()));
    let own = [Error::NotFound("/x".into()), error_samples().pop().unwrap()];
    assert_eq!(set(own.iter().map(Error::code)), set(ROUTE_CODES.iter().copied()));
    // What respond sends for every error and every per-event failure is in the set.
    let all = all_codes();
    for e in error_samples() {
        assert!(all.contains(&e.code()), "{} ({e:?}) is not in all_codes()", e.code());
    }
    let mut o = Outcome::default();
    for (i, p) in publish_samples().into_iter().enumerate() {
        o.add_publish_failure(i, EventType::Track, p);
    }
    for f in &o.errors {
        assert!(all.contains(&f.code), "{} is not in all_codes()", f.code);
    }
    for c in &all {
        assert!(!c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{c} is not snake_case");
    }
}

/// The backquoted snake_case words of `text`.
fn backquoted(text: &str) -> impl Iterator<Item = &str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
}

/// The codes the README documents: in its "Answers" section, the `code` column of the table
/// and the "Event codes:" sentence.
fn documented_codes() -> BTreeSet<&'static str> {
    let readme = include_str!("../../../../README.md");
    let start = readme.find("### Answers").expect("README has an \"### Answers\" section");
    let section = &readme[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let lines: Vec<&str> = section.lines().collect();
    let mut out = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let header = lines.get(i + 1).is_some_and(|next| next.starts_with("|-") || next.starts_with("| -"));
        if line.starts_with('|') && !header {
            out.extend(line.split('|').nth(2).into_iter().flat_map(backquoted));
        }
    }
    let events = section.find("Event codes:").expect("README lists the \"Event codes:\"");
    let sentence = &section[events..];
    let sentence = &sentence[..sentence.find(". ").unwrap_or(sentence.len())];
    out.extend(backquoted(sentence));
    out
}

#[test]
fn every_code_is_documented_in_the_readme_and_nothing_else_is() {
    let documented = documented_codes();
    let all = set(all_codes());
    let undocumented: Vec<_> = all.difference(&documented).collect();
    assert!(undocumented.is_empty(), "codes missing from the README's Answers section: {undocumented:?}");
    let unknown: Vec<_> = documented.difference(&all).collect();
    assert!(unknown.is_empty(), "the README documents codes the gateway does not send: {unknown:?}");
}

/// `"code"` literals right after a `StatusCode::NAME,` in the `.rs` files under `dir`.
fn literal_codes(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            literal_codes(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        // A code literal right after a status (the router) or a failure kind (the pipeline).
        while let Some(i) = [rest.find("StatusCode::"), rest.find("FailureKind::")].into_iter().flatten().min() {
            rest = &rest[i..];
            rest = &rest[rest.find("::").unwrap_or(0) + 2..];
            let after = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
            let Some(arg) = after.strip_prefix(',').map(str::trim_start).and_then(|a| a.strip_prefix('"')) else {
                continue;
            };
            if let Some(end) = arg.find('"') {
                out.push((path.display().to_string(), arg[..end].to_string()));
            }
        }
    }
}

#[test]
fn codes_written_as_literals_in_the_sources_are_listed() {
    let mut found = Vec::new();
    literal_codes(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
    // The pipeline and the router write some codes as literals today; if they stop, drop this.
    assert!(!found.is_empty(), "the scan found no `StatusCode::…, \"code\"` literal at all");
    let all = all_codes();
    for (file, code) in &found {
        assert!(all.contains(&code.as_str()), "{file}: code {code:?} is not in respond's lists");
    }
}

#[test]
fn retriable_publish_failure_wins() {
    let mut o = Outcome { received: 3, accepted: 1, ..Default::default() };
    assert_eq!(batch(&o, false).status(), StatusCode::OK);
    o.add_publish_failure(1, EventType::Track, PublishError::Fatal("auth".into()));
    o.add_publish_failure(2, EventType::Track, PublishError::Timeout);
    let r = batch(&o, false);
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()[http::header::RETRY_AFTER], "2");
    let mut o = Outcome { received: 2, accepted: 0, ..Default::default() };
    o.add_publish_failure(0, EventType::Track, PublishError::Fatal("auth".into()));
    o.add_publish_failure(1, EventType::Track, PublishError::Fatal("auth".into()));
    assert_eq!(batch(&o, false).status(), StatusCode::INTERNAL_SERVER_ERROR);
}
