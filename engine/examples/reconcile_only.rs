// scratch: time one reconcile of a folder into a fresh repository (not committed)
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let corpus = std::path::PathBuf::from(&args[1]);
    let work = std::path::PathBuf::from(&args[2]);
    let dir = work.join(format!(
        "r-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let repo = standin_engine::repository::Repository::open(&dir).unwrap();
    let t = std::time::Instant::now();
    let events = standin_engine::folder::scan::reconcile(&corpus, &repo, 1).unwrap();
    eprintln!(
        "{} events in {:.3} s",
        events.len(),
        t.elapsed().as_secs_f64()
    );
}
