//! The hooks (`on_promote`, `on_demote`): each a command line `sh -c` runs; its
//! program must exist and be executable when the node starts, not when a failover
//! needs it.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::{can_access, Finding, Level};

/// Words `sh` runs itself: a hook starting with one is a shell command line, not
/// checked further.
const SHELL_WORDS: &[&str] = &[
    ":", ".", "[", "!", "{", "(", "case", "cd", "command", "echo", "eval", "exec", "exit",
    "export", "false", "for", "if", "printf", "read", "set", "test", "true", "umask", "unset",
    "until", "while",
];

/// The program a hook runs: its first word after `NAME=value` assignments, with
/// simple quotes removed.
fn hook_program(command: &str) -> Option<String> {
    let mut rest = command.trim_start();
    loop {
        let (word, after) = match rest.chars().next()? {
            quote @ ('\'' | '"') => {
                let end = rest[1..].find(quote)? + 1;
                (rest[1..end].to_string(), &rest[end + 1..])
            }
            _ => {
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == ';' || c == '|' || c == '&')
                    .unwrap_or(rest.len());
                (rest[..end].to_string(), &rest[end..])
            }
        };
        let is_assignment = word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if !is_assignment {
            return Some(word);
        }
        rest = after.trim_start();
    }
}

/// A hook: its program exists (a path, or found in PATH as `sh` would) and is an
/// executable file.
pub fn check_hook(key: &'static str, command: &str) -> Finding {
    let Some(program) = hook_program(command).filter(|program| !program.is_empty()) else {
        return Finding::new(Level::Fail, key, format!("{command:?} names no program"));
    };
    if SHELL_WORDS.contains(&program.as_str()) {
        return Finding::new(
            Level::Ok,
            key,
            format!("{command:?} is a shell command line (its programs are not checked)"),
        );
    }
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(&program)]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        std::env::split_paths(&path)
            .map(|dir| dir.join(&program))
            .collect()
    };
    for candidate in &candidates {
        let Ok(metadata) = std::fs::metadata(candidate) else {
            continue;
        };
        if !metadata.is_file() {
            continue;
        }
        if metadata.permissions().mode() & 0o111 == 0 || !can_access(candidate, libc::X_OK) {
            return Finding::new(
                Level::Fail,
                key,
                format!("{} is not executable (chmod +x)", candidate.display()),
            );
        }
        return Finding::new(
            Level::Ok,
            key,
            format!("runs {} (executable)", candidate.display()),
        );
    }
    let reason = if program.contains('/') {
        format!("{program}: no such file")
    } else {
        format!("{program:?} is not found in PATH")
    };
    Finding::new(
        Level::Fail,
        key,
        format!("{reason}: the hook could not run"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_of_a_hook() {
        assert_eq!(
            hook_program("/usr/bin/x --a b").as_deref(),
            Some("/usr/bin/x")
        );
        assert_eq!(
            hook_program("A=1 B=two '/opt/my hook' arg").as_deref(),
            Some("/opt/my hook")
        );
        assert_eq!(hook_program("logger x;true").as_deref(), Some("logger"));
        assert_eq!(hook_program("   ").as_deref(), None);
    }

    #[test]
    fn hooks_must_name_an_executable_program() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hook.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let plain = format!("{} --now", script.display());
        let finding = check_hook("on_promote", &plain);
        assert_eq!(finding.level, Level::Fail, "{finding:?}");
        assert!(finding.message.contains("not executable"), "{finding:?}");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_hook("on_promote", &plain).level, Level::Ok);
        let missing = check_hook("on_demote", &format!("{}/nothing", dir.path().display()));
        assert_eq!(missing.level, Level::Fail);
        assert!(missing.message.contains("no such file"), "{missing:?}");
        assert_eq!(check_hook("on_demote", "sh -c true").level, Level::Ok);
        assert_eq!(
            check_hook("on_demote", "echo hi >> /tmp/x").level,
            Level::Ok
        );
        let unknown = check_hook("on_demote", "no-such-program-standin-test");
        assert_eq!(unknown.level, Level::Fail);
        assert!(unknown.message.contains("not found in PATH"), "{unknown:?}");
    }
}
