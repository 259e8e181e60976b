//! The Kubernetes upstream NetworkPolicy e2e suite ("Netpol", test/e2e/network/netpol/
//! network_policy.go) as data: a fixture cluster (namespaces x, y, z; pods a, b, c) and one
//! file per case with the policies and the expected truth tables of `matrix()`. The data
//! format is described in tests/upstream/README.md; the parser is
//! `margay_testkit::upstream`, shared with the lab tests that check some of the cases
//! against real packets.
//!
//! Every case runs; all failures are printed together (file, name, a table of expected
//! against got) before the test fails.

use std::fmt::Write as _;
use std::path::Path;

use margay_policy::{matrix, Cluster, Protocol};
use margay_testkit::upstream::{case_files, diff, Case, Fixture, Table, DIR};

#[test]
fn upstream_netpol_cases() {
    let fixture = Fixture::load_default().unwrap_or_else(|e| panic!("{e}"));

    let files = case_files().unwrap_or_else(|e| panic!("{e}"));
    assert!(!files.is_empty(), "no case files in {DIR}/cases");

    let mut failures = Vec::new();
    let mut checks = 0;
    for file in &files {
        let short = file.file_name().unwrap().to_string_lossy().into_owned();
        match run_case(file, &fixture) {
            Ok(n) => checks += n,
            Err(report) => failures.push(format!("=== {short}\n{report}")),
        }
    }

    if !failures.is_empty() {
        eprintln!("{}", failures.join("\n"));
        panic!(
            "{} of {} upstream NetworkPolicy cases failed (see above)",
            failures.len(),
            files.len()
        );
    }
    eprintln!(
        "{} upstream NetworkPolicy cases, {checks} truth tables, all as expected",
        files.len()
    );
}

/// Runs one case; the number of checks on success, a report on failure.
fn run_case(file: &Path, fixture: &Fixture) -> Result<usize, String> {
    let case = Case::load(file, fixture)?;
    let header = case.header();
    let cluster = match Cluster::from_resources(case.resources) {
        Ok(c) => c,
        Err(e) => return Err(format!("{header}Cluster::from_resources failed: {e}\n")),
    };

    let mut report = String::new();
    for check in &case.checks {
        let protocol: Protocol = check
            .protocol
            .parse()
            .map_err(|e| format!("{header}protocol {:?}: {e:?}\n", check.protocol))?;
        let m = matrix(&cluster, check.port, protocol);
        let got = match Table::from_matrix(&fixture.pods, &m.allowed, &m.denied) {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(
                    report,
                    "  {}/{}: matrix() output is malformed: {e}",
                    check.protocol, check.port
                );
                continue;
            }
        };
        if got != check.expect {
            report.push_str(&diff(&fixture.pods, check, &got));
        }
    }
    if report.is_empty() {
        Ok(case.checks.len())
    } else {
        Err(format!("{header}{report}"))
    }
}
