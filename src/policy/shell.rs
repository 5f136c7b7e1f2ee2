//! Does a container's `command`/`args` start a shell?

/// Programs that are shells (the list image inspection looks for too).
pub(crate) use crate::image::catalog::SHELL_NAMES as SHELLS;

/// Programs that run the rest of their arguments as a command.
const WRAPPERS: &[&str] = &[
    "env",
    "tini",
    "tini-static",
    "dumb-init",
    "catatonit",
    "nohup",
    "setsid",
    "exec",
    "nice",
];

/// Which field of the container holds the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArgvField {
    Command,
    Args,
}

impl ArgvField {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ArgvField::Command => "command",
            ArgvField::Args => "args",
        }
    }
}

/// A shell found in a container's argv.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShellInvocation {
    /// Where the shell program stands.
    pub field: ArgvField,
    pub index: usize,
    /// The program as written (`/bin/sh`, `bash`, `busybox sh`).
    pub program: String,
    /// The flag and script passed inline with `-c` (or `-lc`, `-ec`, ...).
    pub inline_script: Option<(String, String)>,
}

fn base_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

fn is_shell(program: &str) -> bool {
    SHELLS.contains(&base_name(program))
}

/// Finds a shell started by `command` + `args`. With no `command`, the image's
/// entrypoint receives `args`; a shell name in `args[0]` is then what an
/// entrypoint wrapper (`tini --`, `docker-entrypoint.sh`) will exec.
/// Flags that merely contain `c` for other programs (`python -c`, `nginx -c`)
/// are not shells.
pub(crate) fn find_shell(command: &[String], args: &[String]) -> Option<ShellInvocation> {
    let argv: Vec<(ArgvField, usize, &str)> = command
        .iter()
        .enumerate()
        .map(|(i, s)| (ArgvField::Command, i, s.as_str()))
        .chain(args.iter().enumerate().map(|(i, s)| (ArgvField::Args, i, s.as_str())))
        .collect();

    let mut pos = 0;
    while let Some(&(_, _, word)) = argv.get(pos) {
        if !WRAPPERS.contains(&base_name(word)) {
            break;
        }
        let wrapper = base_name(word);
        pos += 1;
        // Skip the wrapper's own options and, for env, its VAR=value words.
        while let Some(&(_, _, next)) = argv.get(pos) {
            let skip = next.starts_with('-') || (wrapper == "env" && next.contains('='));
            if !skip {
                break;
            }
            pos += 1;
            if next == "--" {
                break;
            }
        }
    }

    let &(field, index, word) = argv.get(pos)?;
    let program = if is_shell(word) {
        word.to_string()
    } else if base_name(word) == "busybox" {
        let &(_, _, applet) = argv.get(pos + 1)?;
        if !is_shell(applet) {
            return None;
        }
        format!("{word} {applet}")
    } else {
        return None;
    };

    // The flag is looked for from the program on: its own words (a shell's
    // name, `busybox`) never start with `-`.
    let rest = &argv[pos..];
    let inline_script = rest.iter().position(|&(_, _, a)| is_inline_flag(a)).and_then(|i| {
        let (_, _, flag) = rest[i];
        rest.get(i + 1)
            .map(|&(_, _, script)| (flag.to_string(), script.to_string()))
    });

    Some(ShellInvocation {
        field,
        index,
        program,
        inline_script,
    })
}

/// `-c`, `-lc`, `-ec`, `-xec`: a cluster of short options that includes `c`.
fn is_inline_flag(arg: &str) -> bool {
    // Letters only (so not `--config`), one of them `c` (so not empty).
    arg.strip_prefix('-')
        .is_some_and(|flags| flags.chars().all(|c| c.is_ascii_alphabetic()) && flags.contains('c'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sh_dash_c_is_a_shell_with_an_inline_script() {
        let found = find_shell(&v(&["sh", "-c", "echo hi"]), &[]).unwrap();
        assert_eq!(found.program, "sh");
        assert_eq!(found.inline_script, Some(("-c".into(), "echo hi".into())));
        assert_eq!((found.field, found.index), (ArgvField::Command, 0));
    }

    #[test]
    fn bash_login_flag_cluster_is_caught() {
        let found = find_shell(&v(&["/bin/bash", "-lc", "exec app"]), &[]).unwrap();
        assert_eq!(found.program, "/bin/bash");
        assert_eq!(found.inline_script, Some(("-lc".into(), "exec app".into())));
    }

    #[test]
    fn command_bash_with_dash_c_in_args_is_caught() {
        let found = find_shell(&v(&["bash"]), &v(&["-c", "run.sh && sleep 1"])).unwrap();
        assert_eq!(found.field, ArgvField::Command);
        assert_eq!(found.inline_script, Some(("-c".into(), "run.sh && sleep 1".into())));
    }

    #[test]
    fn busybox_sh_is_a_shell() {
        let found = find_shell(&v(&["busybox", "sh", "-c", "true"]), &[]).unwrap();
        assert_eq!(found.program, "busybox sh");
        assert!(find_shell(&v(&["/busybox/sh"]), &[]).is_some());
        assert!(find_shell(&v(&["busybox", "wget", "-c", "x"]), &[]).is_none());
    }

    #[test]
    fn programs_whose_flags_contain_c_are_not_shells() {
        assert!(find_shell(&v(&["python3", "-c", "print(1)"]), &[]).is_none());
        assert!(find_shell(&v(&["nginx", "-c", "/etc/nginx/nginx.conf"]), &[]).is_none());
        assert!(find_shell(&v(&["/app/server"]), &v(&["-c", "config.yaml"])).is_none());
        assert!(find_shell(&[], &v(&["-c", "max_connections=200"])).is_none());
        assert!(find_shell(&v(&["/usr/bin/shellcheck", "-c"]), &[]).is_none());
    }

    #[test]
    fn wrappers_are_looked_through() {
        let found = find_shell(&v(&["tini", "--"]), &v(&["sh", "-c", "x"])).unwrap();
        assert_eq!((found.field, found.index), (ArgvField::Args, 0));
        assert!(find_shell(&v(&["/usr/bin/env", "-i", "A=b", "bash", "-c", "x"]), &[]).is_some());
        assert!(find_shell(&v(&["dumb-init", "/bin/sh", "start.sh"]), &[]).is_some());
        assert!(find_shell(&v(&["env", "A=1", "/app/server"]), &[]).is_none());
    }

    #[test]
    fn args_alone_starting_with_a_shell_are_caught() {
        assert!(find_shell(&[], &v(&["/bin/sh", "-c", "x"])).is_some());
    }

    #[test]
    fn a_script_and_its_arguments_are_not_an_inline_script() {
        let found = find_shell(&v(&["bash", "/entry.sh", "--verbose"]), &[]).unwrap();
        assert_eq!(found.inline_script, None);
        let found = find_shell(&v(&["sh", "--norc", "-x1", "-", "/s.sh"]), &[]).unwrap();
        assert_eq!(found.inline_script, None, "--norc, -x1 and - are no -c");
        let found = find_shell(&v(&["env", "-i", "A=1", "busybox", "sh", "-ec", "exec /app"]), &[]).unwrap();
        assert_eq!(found.inline_script, Some(("-ec".into(), "exec /app".into())));
    }

    #[test]
    fn a_shell_without_inline_script_is_still_a_shell() {
        let found = find_shell(&v(&["bash", "/scripts/start.sh"]), &[]).unwrap();
        assert_eq!(found.inline_script, None);
    }
}
