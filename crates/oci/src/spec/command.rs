//! The container's argv and environment from the CRI config and the image config, by the
//! Kubernetes rules (<https://kubernetes.io/docs/tasks/inject-data-application/define-command-argument-container/#notes>).

/// The process argv by the Kubernetes rules for `command`/`args` versus the image's
/// `Entrypoint`/`Cmd`:
///
/// | command | args | result |
/// |---|---|---|
/// | empty | empty | image Entrypoint + image Cmd |
/// | set | empty | command (the image's Entrypoint *and* Cmd are ignored) |
/// | empty | set | image Entrypoint + args |
/// | set | set | command + args |
///
/// `None` when the result is empty (nothing to run).
pub fn merge_command(
    command: &[String],
    args: &[String],
    image_entrypoint: &[String],
    image_cmd: &[String],
) -> Option<Vec<String>> {
    let argv: Vec<String> = match (command.is_empty(), args.is_empty()) {
        (true, true) => image_entrypoint.iter().chain(image_cmd).cloned().collect(),
        (false, true) => command.to_vec(),
        (true, false) => image_entrypoint.iter().chain(args).cloned().collect(),
        (false, false) => command.iter().chain(args).cloned().collect(),
    };
    (!argv.is_empty()).then_some(argv)
}

/// The default `PATH` when neither the image nor the config sets one (what CRI-O and
/// containerd use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Merges `KEY=VALUE` environments: the image's first, then the config's, a later key replacing
/// an earlier one in place (so the order of first appearance is kept). Adds `PATH` when missing
/// and each of `extra` (`HOME`, `HOSTNAME`, `TERM`) only when neither source set it.
pub fn merge_env(
    image: &[String],
    config: &[(String, String)],
    extra: &[(&str, &str)],
) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        if let Some(slot) = out.iter_mut().find(|(key, _)| key == k) {
            slot.1 = v.to_string();
        } else {
            out.push((k.to_string(), v.to_string()));
        }
    };
    for kv in image {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        if !k.is_empty() {
            set(k, v);
        }
    }
    for (k, v) in config {
        if !k.is_empty() {
            set(k, v);
        }
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    for (k, v) in extra {
        if !out.iter().any(|(key, _)| key == k) {
            out.push(((*k).to_string(), (*v).to_string()));
        }
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kubernetes_command_rules() {
        let ep = v(&["/ep"]);
        let cmd = v(&["cmd-arg"]);
        assert_eq!(
            merge_command(&[], &[], &ep, &cmd),
            Some(v(&["/ep", "cmd-arg"]))
        );
        assert_eq!(merge_command(&v(&["/c"]), &[], &ep, &cmd), Some(v(&["/c"])));
        assert_eq!(
            merge_command(&[], &v(&["a"]), &ep, &cmd),
            Some(v(&["/ep", "a"]))
        );
        assert_eq!(
            merge_command(&v(&["/c"]), &v(&["a", "b"]), &ep, &cmd),
            Some(v(&["/c", "a", "b"]))
        );
        // An image with only Cmd and a config with only args: args replace Cmd.
        assert_eq!(merge_command(&[], &v(&["x"]), &[], &cmd), Some(v(&["x"])));
        assert_eq!(merge_command(&[], &[], &[], &[]), None);
    }

    #[test]
    fn env_config_overrides_image_in_place_and_defaults_fill_gaps() {
        let env = merge_env(
            &v(&["A=1", "PATH=/img", "B=2", "NOVALUE"]),
            &[("B".into(), "3".into()), ("C".into(), "x=y".into())],
            &[("HOME", "/root"), ("B", "ignored")],
        );
        assert_eq!(
            env,
            v(&["A=1", "PATH=/img", "B=3", "NOVALUE=", "C=x=y", "HOME=/root"])
        );
        let env = merge_env(&[], &[], &[]);
        assert_eq!(env, vec![format!("PATH={DEFAULT_PATH}")]);
    }
}
