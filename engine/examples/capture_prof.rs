// scratch: profile reconcile on N small files (not committed)
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let corpus = std::path::PathBuf::from(&args[1]);
    let work = std::path::PathBuf::from(&args[2]);
    let runs: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(3);
    for run in 0..runs {
        let t = Instant::now();
        let tree = standin_engine::folder::scan::walk(&corpus, None).unwrap();
        let walk = t.elapsed().as_secs_f64();
        drop(tree);
        let repo = standin_engine::repository::Repository::open(
            &work.join(format!("r{run}-{}", std::process::id())),
        )
        .unwrap();
        let t = Instant::now();
        let diff = {
            let _g = repo.content_guard();
            standin_engine::folder::scan::diff_scope(&corpus, &repo, None, None).unwrap()
        };
        let d = t.elapsed().as_secs_f64();
        drop(diff);
        let repo = standin_engine::repository::Repository::open(
            &work.join(format!("s{run}-{}", std::process::id())),
        )
        .unwrap();
        let t = Instant::now();
        let events = standin_engine::folder::scan::reconcile(&corpus, &repo, 1).unwrap();
        println!(
            "run {run}: walk {walk:.3} diff {d:.3} reconcile {:.3} ({} events)",
            t.elapsed().as_secs_f64(),
            events.len()
        );
    }
}
