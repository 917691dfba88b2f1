//! The published vectors in `tests/vectors/` (at the repository root): every case of every
//! file runs and passes, one test per file; the files are exactly what the generator
//! writes; changing any byte of a positive case makes it fail; regeneration never
//! overwrites a differing file without `force`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use dm_vectors::{Case, Written, categories, check_case, mutations, verify_dir, verify_file};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

fn raw(name: &str) -> Value {
    let path = vectors_dir().join(format!("{name}.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// Runs one file and checks that exactly as many cases ran (and passed) as the file holds,
/// counted here from the raw JSON, independently of the library.
fn run_file(name: &str) {
    let json = raw(name);
    let positive = json["positive"].as_array().map_or(0, Vec::len);
    let negative = json["negative"].as_array().map_or(0, Vec::len);
    let report = verify_file(&vectors_dir().join(format!("{name}.json")));
    let ran_positive = report
        .results
        .iter()
        .filter(|r| r.kind == "positive")
        .count();
    let ran_negative = report
        .results
        .iter()
        .filter(|r| r.kind == "negative")
        .count();
    println!(
        "{name}.json: {ran_positive} of {positive} positive and {ran_negative} of {negative} \
         negative cases ran; {} passed, {} failed",
        report.passed(),
        report.failed()
    );
    for r in report.results.iter().filter(|r| r.failure.is_some()) {
        println!("  FAILED {} {}: {:?}", r.kind, r.name, r.failure);
    }
    assert_eq!(report.file_error, None);
    assert!(positive >= 2, "{name}: too few positive cases");
    assert!(negative >= 5, "{name}: too few negative cases");
    assert_eq!(
        ran_positive, positive,
        "{name}: not every positive case ran"
    );
    assert_eq!(
        ran_negative, negative,
        "{name}: not every negative case ran"
    );
    assert_eq!(report.passed(), positive + negative, "{name}: failures");
    assert_eq!(report.failed(), 0);
    assert!(report.ok());
}

#[test]
fn device_certificate() {
    run_file("device-certificate");
}

#[test]
fn device_list() {
    run_file("device-list");
}

#[test]
fn credential_identity() {
    run_file("credential-identity");
}

#[test]
fn request_auth() {
    run_file("request-auth");
}

#[test]
fn content() {
    run_file("content");
}

#[test]
fn account_key() {
    run_file("account-key");
}

#[test]
fn local_store_key() {
    run_file("local-store-key");
}

#[test]
fn message_framing() {
    run_file("message-framing");
}

#[test]
fn safety_number() {
    run_file("safety-number");
}

/// Every category has a file test above and a file in the directory, and the directory
/// holds nothing else.
#[test]
fn every_category_is_tested_and_published() {
    let tested = [
        "device-certificate",
        "device-list",
        "credential-identity",
        "request-auth",
        "content",
        "account-key",
        "local-store-key",
        "message-framing",
        "safety-number",
    ];
    let names: Vec<&str> = categories().iter().map(|c| c.name).collect();
    assert_eq!(names, tested, "add a #[test] for the new category");
    let report = verify_dir(&vectors_dir()).unwrap();
    assert!(report.missing.is_empty(), "missing: {:?}", report.missing);
    assert_eq!(
        report.files.len(),
        tested.len(),
        "unexpected files in tests/vectors"
    );
    assert!(report.ok());
    println!("{} passed, {} failed", report.passed(), report.failed());
}

/// Regenerating gives exactly the bytes in the repository.
#[test]
fn regeneration_is_byte_identical() {
    for category in categories() {
        let generated = dm_vectors::generate(category).unwrap();
        let stored = std::fs::read(vectors_dir().join(format!("{}.json", category.name))).unwrap();
        assert!(
            generated == stored,
            "{}.json differs from the generator's output: run `dm vectors generate tests/vectors \
             --force` and review the diff",
            category.name
        );
        assert_eq!(dm_vectors::generate(category).unwrap(), generated);
    }
}

/// Changing any single value of a positive case (each byte of each hex field, each
/// character of each other string, each number) makes the case fail. Strings longer than
/// `LIMIT` are mutated at `LIMIT` positions (both ends and evenly in between).
#[test]
fn any_change_to_a_positive_case_fails() {
    const LIMIT: usize = 256;
    let mut total = 0;
    for category in categories() {
        let json = raw(category.name);
        let mut per_file = 0;
        for case in json["positive"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            check_case(category, &Case::Positive(case)).unwrap();
            for (what, mutated) in mutations(case, LIMIT) {
                assert_ne!(
                    &mutated, case,
                    "{}/{name}: {what} changed nothing",
                    category.name
                );
                assert!(
                    check_case(category, &Case::Positive(&mutated)).is_err(),
                    "{}/{name}: {what} still verifies",
                    category.name
                );
                per_file += 1;
            }
        }
        println!("{}.json: {per_file} mutations, all rejected", category.name);
        assert!(per_file > 100, "{}: too few mutations", category.name);
        total += per_file;
    }
    println!("{total} mutations of positive cases, all rejected");
}

/// A negative case is checked against its stated code: the same bytes with another code
/// fail, and a negative case that verifies fails.
#[test]
fn negative_cases_must_fail_with_their_code() {
    let category = categories().iter().find(|c| c.name == "content").unwrap();
    let json = raw("content");
    let mut case = json["negative"][0].clone();
    check_case(category, &Case::Negative(&case)).unwrap();
    case["error"] = "truncated".into();
    let err = check_case(category, &Case::Negative(&case)).unwrap_err();
    assert!(err.contains("but the vector says truncated"), "{err}");
    // A valid content presented as a negative case.
    let mut valid = json["positive"][1].clone();
    valid["error"] = "truncated".into();
    valid["defect"] = "none".into();
    let err = check_case(category, &Case::Negative(&valid)).unwrap_err();
    assert!(err.contains("accepted"), "{err}");
}

/// The count check is real: a case whose verifier cannot run (a missing field) is a
/// failure, a duplicated name is a failure, and an unknown category is a file error.
#[test]
fn broken_files_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("content.json");
    let mut json = raw("content");
    json["positive"][0]
        .as_object_mut()
        .unwrap()
        .remove("content");
    let dup = json["negative"][0].clone();
    json["negative"].as_array_mut().unwrap().push(dup);
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let report = verify_file(&path);
    assert_eq!(report.cases_in_file, report.results.len());
    assert_eq!(report.failed(), 2, "{:?}", report.results);
    assert!(!report.ok());

    let path = tmp.path().join("nonsense.json");
    std::fs::write(&path, br#"{"format":"dm-test-vectors"}"#).unwrap();
    let report = verify_file(&path);
    assert!(report.file_error.is_some());
    assert!(!report.ok());
    assert_eq!(report.failed(), 1);

    // A directory with one file: every other category is reported missing.
    let dir = verify_dir(tmp.path()).unwrap();
    assert_eq!(dir.missing.len(), categories().len() - 1);
    assert!(!dir.ok());
}

/// Writing: created, then unchanged; a differing file is kept unless `force`.
#[test]
fn generation_never_overwrites_silently() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vectors");
    let first = dm_vectors::write_all(&dir, false).unwrap();
    assert!(first.iter().all(|(_, w)| *w == Written::Created));
    let again = dm_vectors::write_all(&dir, false).unwrap();
    assert!(again.iter().all(|(_, w)| *w == Written::Unchanged));

    let edited = dir.join("content.json");
    std::fs::write(&edited, b"{}").unwrap();
    let err = dm_vectors::write_all(&dir, false).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(&edited).unwrap(), b"{}");

    let forced = dm_vectors::write_all(&dir, true).unwrap();
    let replaced: Vec<_> = forced
        .iter()
        .filter(|(_, w)| *w == Written::Replaced)
        .collect();
    assert_eq!(replaced.len(), 1);
    assert!(verify_dir(&dir).unwrap().ok());
}
