//! PROTOCOL.md documents every route of the relay, and nothing else.
//!
//! The documented routes are the rows of the table in PROTOCOL.md §2.1. The router's routes
//! are read from the code twice: from [`dm_server::routes`], the list the router is built
//! from, and by probing the real router (on a real SQLite store): every
//! documented method and path must reach a handler (not the 404 fallback, not 405), every
//! other method on a documented path must be 405, and an undocumented path must fall back
//! to 404.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use support::Relay;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// `(method, path)` pairs, paths without their query and with `{param}` placeholders.
type Routes = BTreeSet<(String, String)>;

fn documented() -> Routes {
    let doc = include_str!("../../../PROTOCOL.md");
    let mut routes = Routes::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | METHOD | `path` | auth | request | success |
        if cells.len() < 4 || !METHODS.contains(&cells[1]) {
            continue;
        }
        let path = cells[2].trim_matches('`');
        let path = path.split('?').next().unwrap();
        assert!(
            path.starts_with('/'),
            "bad path cell in PROTOCOL.md: {line}"
        );
        routes.insert((cells[1].to_owned(), path.to_owned()));
    }
    assert!(
        routes.len() >= 10,
        "the routes table of PROTOCOL.md was not found"
    );
    routes
}

/// The routes the router is built from ([`dm_server::routes`]).
fn in_code() -> Routes {
    dm_server::routes()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_owned(), path.to_owned()))
        .collect()
}

#[test]
fn protocol_md_lists_exactly_the_routes_of_the_router() {
    let documented = documented();
    let code = in_code();
    let undocumented: Vec<_> = code.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&code).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "routes in the router but not in PROTOCOL.md §2.1: {undocumented:?}; \
         documented but not in the router: {missing:?}"
    );
    println!("{} routes documented and registered", documented.len());
}

fn concrete(path: &str) -> String {
    path.replace("{handle}", "alice")
}

fn is_fallback(status: u16, body: &[u8]) -> bool {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    (status == 404 && code.as_deref() == Some("not_found"))
        || (status == 405 && code.as_deref() == Some("method_not_allowed"))
}

#[tokio::test]
async fn every_documented_route_reaches_a_handler_and_nothing_else_does() {
    let relay = Relay::start().await;
    let documented = documented();
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            let resp = relay.raw(method, &concrete(path), None, Vec::new()).await;
            let is_documented = documented.contains(&(method.to_owned(), path.clone()));
            if is_documented {
                assert!(
                    !is_fallback(resp.status, &resp.body),
                    "{method} {path} is documented but the router has no handler for it \
                     (status {})",
                    resp.status
                );
            } else {
                assert_eq!(
                    resp.status, 405,
                    "{method} {path} is not documented but the router answers it"
                );
            }
        }
    }
    // The probe can tell: an unknown path falls back to 404 not_found.
    let resp = relay.raw("GET", "/v1/undocumented", None, Vec::new()).await;
    assert!(is_fallback(resp.status, &resp.body));
    assert_eq!(resp.status, 404);
}
