//! The one heavy test: `service/packaging/build-deb` makes the release build and runs
//! cargo-deb (minutes on a fresh clone; it prints how long), then the package is
//! unpacked with `dpkg-deb -x` and checked. Installing it (maintainer scripts,
//! `systemctl`) needs a full root with systemd running: not done here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{installed, run_ok, workspace};

/// Files the package must hold, relative to its root.
const EXPECTED: &[&str] = &[
    "usr/bin/standin",
    "usr/lib/systemd/system/standin.service",
    "usr/lib/systemd/system/standin-agent.service",
    "etc/standin/active.toml.example",
    "etc/standin/passive.toml.example",
    "etc/standin/agent.env.example",
    "usr/share/man/man1/standin.1.gz",
    "usr/share/man/man1/standin-serve.1.gz",
    "usr/share/man/man1/standin-agent.1.gz",
    "usr/share/man/man1/standin-init-secret.1.gz",
    "usr/share/man/man1/standin-status.1.gz",
    "usr/share/man/man1/standin-check-config.1.gz",
    "usr/share/man/man1/standin-drill.1.gz",
    "usr/share/bash-completion/completions/standin",
    "usr/share/zsh/vendor-completions/_standin",
    "usr/share/fish/vendor_completions.d/standin.fish",
    "usr/share/doc/standin/README.md",
    "usr/share/doc/standin/copyright",
];

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn the_debian_package() {
    assert!(
        Command::new("cargo")
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|output| output.status.success()),
        "cargo-deb is missing: run .ci/run, or cargo install cargo-deb --locked --version 3.8.0"
    );
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let built = run_ok(
        Command::new("bash")
            .arg(workspace().join("service/packaging/build-deb"))
            .arg("--output")
            .arg(out.path())
            .current_dir(workspace()),
    );
    eprintln!(
        "build-deb (release build + cargo-deb) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let stdout = String::from_utf8_lossy(&built.stdout);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        deb.starts_with(out.path()) && deb.is_file(),
        "build-deb printed {stdout}"
    );

    let field = |name: &str| {
        let output = run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "standin");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));

    let root = out.path().join("root");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    for path in EXPECTED {
        assert!(root.join(path).is_file(), "the package has no {path}");
    }
    let packaging = workspace().join("service/packaging");
    for name in [
        "active.toml.example",
        "passive.toml.example",
        "agent.env.example",
    ] {
        assert_eq!(
            text(&root.join("etc/standin").join(name)),
            text(&packaging.join("examples").join(name))
        );
    }
    for name in ["standin.service", "standin-agent.service"] {
        assert_eq!(
            text(&root.join("usr/lib/systemd/system").join(name)),
            text(&packaging.join("systemd").join(name))
        );
    }

    let version = run_ok(Command::new(root.join("usr/bin/standin")).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("standin {}\n", env!("CARGO_PKG_VERSION"))
    );

    check_man_pages(&root);
    check_completions(&root);
    check_maintainer_scripts(&deb, out.path());
    systemd_verify(&root, out.path());
}

fn check_man_pages(root: &Path) {
    let dir = root.join("usr/share/man/man1");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.ends_with(".1.gz"), "{name}");
        assert!(!name.contains("generate"), "{name}: packaging only");
        let page = run_ok(Command::new("gzip").arg("-dc").arg(&path));
        let page = String::from_utf8_lossy(&page.stdout);
        assert!(page.contains(".TH "), "{name} is not a man page");
    }
    let main = run_ok(
        Command::new("gzip")
            .arg("-dc")
            .arg(dir.join("standin.1.gz")),
    );
    let main = String::from_utf8_lossy(&main.stdout);
    for needle in ["STANDIN_LOG", "log\\-format", "/etc/standin/standin.toml"] {
        assert!(
            main.contains(needle),
            "standin(1) does not mention {needle}"
        );
    }
}

fn check_completions(root: &Path) {
    let bash = root.join("usr/share/bash-completion/completions/standin");
    run_ok(Command::new("bash").arg("-n").arg(&bash));
    let zsh = text(&root.join("usr/share/zsh/vendor-completions/_standin"));
    assert!(zsh.starts_with("#compdef standin"), "{}", &zsh[..40]);
    let fish = text(&root.join("usr/share/fish/vendor_completions.d/standin.fish"));
    assert!(fish.contains("complete -c standin"));
    for completion in [text(&bash), zsh, fish] {
        assert!(completion.contains("init-secret") && completion.contains("log-format"));
        assert!(!completion.contains("generate"), "packaging only");
    }
}

/// The package never enables or starts a service; removal stops them.
fn check_maintainer_scripts(deb: &Path, out: &Path) {
    let control = out.join("control");
    run_ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    let conffiles = text(&control.join("conffiles"));
    let mut conffiles: Vec<&str> = conffiles.lines().collect();
    conffiles.sort();
    assert_eq!(
        conffiles,
        [
            "/etc/standin/active.toml.example",
            "/etc/standin/agent.env.example",
            "/etc/standin/passive.toml.example"
        ]
    );
    let postinst = text(&control.join("postinst"));
    assert!(postinst.contains("deb-systemd-helper update-state standin.service"));
    assert!(
        !postinst.contains("deb-systemd-invoke"),
        "the package must not start a service:\n{postinst}"
    );
    let prerm = text(&control.join("prerm"));
    assert!(prerm.contains("deb-systemd-invoke stop standin.service standin-agent.service"));
    assert!(!prerm.contains("#DEBHELPER#"));
    for script in ["postinst", "postrm", "prerm"] {
        run_ok(Command::new("sh").arg("-n").arg(control.join(script)));
    }
}

/// `systemd-analyze verify` of the units, with ExecStart pointed at the unpacked binary
/// and the man pages they name looked up in the package. Skipped, saying so, where
/// systemd-analyze is missing or cannot verify even a trivial unit.
fn systemd_verify(root: &Path, out: &Path) {
    if !installed("systemd-analyze") {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed (apt-get install systemd; .ci/run does)");
        return;
    }
    let units = out.join("units");
    std::fs::create_dir_all(&units).unwrap();
    let probe = units.join("standin-probe.service");
    std::fs::write(
        &probe,
        "[Unit]\nDescription=probe\n[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let probed = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&probe)
        .output()
        .unwrap();
    std::fs::remove_file(&probe).unwrap();
    if !probed.status.success() {
        eprintln!(
            "SKIPPED systemd-analyze verify: it cannot verify a trivial unit here: {}",
            String::from_utf8_lossy(&probed.stderr)
        );
        return;
    }
    let binary = root.join("usr/bin/standin");
    let mut paths = Vec::new();
    for name in ["standin.service", "standin-agent.service"] {
        let unit = text(&root.join("usr/lib/systemd/system").join(name));
        assert!(unit.contains("ExecStart=/usr/bin/standin "), "{name}");
        let path = units.join(name);
        std::fs::write(
            &path,
            unit.replace("/usr/bin/standin", &binary.to_string_lossy()),
        )
        .unwrap();
        paths.push(path);
    }
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if installed("man") {
        verify.env("MANPATH", root.join("usr/share/man"));
    } else {
        eprintln!("man is not installed: the units' Documentation= pages are not looked up");
        verify.arg("--man=no");
    }
    let output = verify.args(&paths).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        output.status
    );
    eprintln!("systemd-analyze verify: both units clean");
}
