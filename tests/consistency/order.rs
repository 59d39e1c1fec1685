//! The order of names and what they publish: `echo o > t; ln t object; rm t;
//! echo r > ref.lock; mv ref.lock ref`, as quick successive syscalls in the active's
//! folder. The log must hold the event creating `object` at or before the one creating
//! `ref` (an object before the ref that names it).

use std::io::Write;

use crate::common::{heavy, soak_runs, LogReader};
use crate::support::{wait_within, NodeProcess, LIMIT};

/// `echo text > path`: open (create, truncate), write, close.
fn echo(path: &std::path::Path, text: &str) {
    let mut file = std::fs::File::create(path).unwrap();
    writeln!(file, "{text}").unwrap();
}

fn objects_before_refs(rounds: usize) {
    let _heavy = heavy();
    let root = tempfile::tempdir().unwrap();
    let mut alpha = NodeProcess::configure(
        root.path(),
        "alpha",
        "active",
        None,
        "replication_period = 0\n",
    );
    alpha.start();
    wait_within("alpha to be active", LIMIT, || alpha.is_active());
    std::fs::create_dir(alpha.folder.join("objects")).unwrap();

    let mut log = LogReader::default();
    let mut failures = Vec::new();
    for round in 0..rounds {
        // Odd rounds publish into a subdirectory, as git does.
        let directory = if round % 2 == 0 { "" } else { "objects/" };
        let (t, object) = (
            format!("{directory}t{round}"),
            format!("{directory}object{round}"),
        );
        let (lock, reference) = (format!("ref{round}.lock"), format!("ref{round}"));
        let folder = &alpha.folder;
        echo(&folder.join(&t), "o");
        std::fs::hard_link(folder.join(&t), folder.join(&object)).unwrap();
        std::fs::remove_file(folder.join(&t)).unwrap();
        echo(&folder.join(&lock), "r");
        std::fs::rename(folder.join(&lock), folder.join(&reference)).unwrap();

        wait_within(
            &format!("round {round}: {object} and {reference} in alpha's log"),
            LIMIT,
            || {
                log.refresh(&alpha);
                log.first_creating(&object).is_some() && log.first_creating(&reference).is_some()
            },
        );
        let object_event = log.first_creating(&object).unwrap();
        let reference_event = log.first_creating(&reference).unwrap();
        eprintln!("round {round}: {object_event}  /  {reference_event}");
        if object_event.seq > reference_event.seq {
            failures.push(format!(
                "round {round}: {reference} is created by {reference_event}, before {object} by {object_event}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {rounds} refs were logged before the object they name:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn an_object_is_in_the_log_before_the_ref_that_names_it() {
    objects_before_refs(6);
}

#[test]
#[ignore = "soak: STANDIN_SOAK_RUNS rounds (default 200)"]
fn an_object_is_in_the_log_before_the_ref_that_names_it_soak() {
    objects_before_refs(soak_runs(200));
}
