//! A passive restarted (SIGKILL) in the middle of a catch-up resumes where it was,
//! without fetching again the content it already had.

use crate::support::{pseudo_random, tree, wait_until, Pair};

#[test]
fn a_passive_killed_mid_catch_up_resumes_without_fetching_again() {
    let mut pair = Pair::new("replication_period = 0", false);
    // A history the passive needs a while to catch up with: many files, large and small.
    let source = pair.alpha.folder.clone();
    let mut total_bytes = 0u64;
    for dir in 0..20 {
        std::fs::create_dir_all(source.join(format!("d{dir}"))).unwrap();
        for file in 0..100 {
            let size = if file % 25 == 0 { 2 << 20 } else { 4096 };
            std::fs::write(
                source.join(format!("d{dir}/f{file}")),
                pseudo_random(size, (dir * 100 + file) as u64),
            )
            .unwrap();
            total_bytes += size as u64;
        }
    }
    pair.alpha.start();
    // 20 directories and 2,000 files: the active's start-up reconcile records them, as
    // one group (its `Group` event first).
    wait_until("alpha to record the tree", || pair.alpha.head_seq() == 2021);
    let target = pair.alpha.head_seq();

    pair.beta.start();
    let mut seq_at_kill = 0;
    wait_until("beta to be part-way", || {
        seq_at_kill = pair.beta.head_seq();
        seq_at_kill > 0
    });
    pair.beta.kill();
    assert!(
        seq_at_kill < target,
        "the kill landed mid catch-up ({seq_at_kill} of {target})"
    );
    pair.beta.start();
    pair.wait_in_sync();
    assert_eq!(tree(&source), tree(&pair.beta.folder));
    pair.assert_verified();

    // The active served each chunk about once: what was fetched before the kill was not
    // fetched again, except one in-flight group of chunks and the large files staged
    // for the parts in flight (the one being applied and the one being fetched: a
    // staged file does not outlive a restart — the by-reference passive's trade,
    // ARCHITECTURE.md).
    let served = pair
        .alpha
        .metric("standin_chunk_bytes_served_total")
        .unwrap() as u64;
    let in_flight = standin::passive::FETCH_GROUP_BYTES
        + (256 << 10)
        + 2 * standin::passive::APPLY_CONTENT_BYTES;
    assert!(
        served <= total_bytes + in_flight,
        "served {served} bytes for {total_bytes} of content"
    );
}
