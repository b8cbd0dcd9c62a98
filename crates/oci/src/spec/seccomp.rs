//! sluice's built-in `RuntimeDefault` seccomp profile.
//!
//! A deny list, not Docker's ~350-entry allow list: everything is allowed except the syscalls
//! that reach kernel state a container must not touch (namespaces, mounts, keyrings, modules,
//! kexec, clock, swap, BPF, perf, ptrace-like memory access, ...), which fail with `EPERM`.
//! `clone3` fails with `ENOSYS` so libcs fall back to `clone`, whose namespace flags can then be
//! filtered (seccomp cannot look into `clone3`'s struct). Syscalls gated by a capability in
//! Docker's profile stay allowed when the container holds that capability, so `add:
//! [SYS_ADMIN]` keeps meaning what users expect. The trade-off, stated: a syscall added to a
//! future kernel is allowed until listed here; the list is small enough to audit.

use serde_json::{Value, json};

use super::caps::{CapMask, number};

/// Syscalls denied unless the container holds the capability named (or `None`: always).
const DENIED: &[(&str, Option<&str>)] = &[
    // Namespaces and mounts.
    ("unshare", Some("CAP_SYS_ADMIN")),
    ("setns", Some("CAP_SYS_ADMIN")),
    ("mount", Some("CAP_SYS_ADMIN")),
    ("umount", Some("CAP_SYS_ADMIN")),
    ("umount2", Some("CAP_SYS_ADMIN")),
    ("pivot_root", Some("CAP_SYS_ADMIN")),
    ("move_mount", Some("CAP_SYS_ADMIN")),
    ("open_tree", Some("CAP_SYS_ADMIN")),
    ("fsopen", Some("CAP_SYS_ADMIN")),
    ("fsconfig", Some("CAP_SYS_ADMIN")),
    ("fsmount", Some("CAP_SYS_ADMIN")),
    ("fspick", Some("CAP_SYS_ADMIN")),
    ("mount_setattr", Some("CAP_SYS_ADMIN")),
    ("quotactl", Some("CAP_SYS_ADMIN")),
    ("name_to_handle_at", Some("CAP_SYS_ADMIN")),
    ("open_by_handle_at", Some("CAP_DAC_READ_SEARCH")),
    ("lookup_dcookie", Some("CAP_SYS_ADMIN")),
    ("fanotify_init", Some("CAP_SYS_ADMIN")),
    // Keyrings are not namespaced.
    ("keyctl", None),
    ("add_key", None),
    ("request_key", None),
    // Kernel modules, kexec, reboot, swap, accounting.
    ("init_module", Some("CAP_SYS_MODULE")),
    ("finit_module", Some("CAP_SYS_MODULE")),
    ("delete_module", Some("CAP_SYS_MODULE")),
    ("create_module", None),
    ("get_kernel_syms", None),
    ("query_module", None),
    ("kexec_load", Some("CAP_SYS_BOOT")),
    ("kexec_file_load", Some("CAP_SYS_BOOT")),
    ("reboot", Some("CAP_SYS_BOOT")),
    ("swapon", Some("CAP_SYS_ADMIN")),
    ("swapoff", Some("CAP_SYS_ADMIN")),
    ("acct", Some("CAP_SYS_PACCT")),
    // Clocks are not namespaced.
    ("settimeofday", Some("CAP_SYS_TIME")),
    ("stime", Some("CAP_SYS_TIME")),
    ("clock_settime", Some("CAP_SYS_TIME")),
    ("clock_adjtime", Some("CAP_SYS_TIME")),
    // Raw I/O, BPF, perf, other processes' memory.
    ("iopl", Some("CAP_SYS_RAWIO")),
    ("ioperm", Some("CAP_SYS_RAWIO")),
    ("bpf", Some("CAP_BPF")),
    ("perf_event_open", Some("CAP_PERFMON")),
    ("process_vm_readv", Some("CAP_SYS_PTRACE")),
    ("process_vm_writev", Some("CAP_SYS_PTRACE")),
    ("kcmp", Some("CAP_SYS_PTRACE")),
    ("userfaultfd", None),
    // NUMA policy of the node.
    ("mbind", Some("CAP_SYS_NICE")),
    ("set_mempolicy", Some("CAP_SYS_NICE")),
    ("move_pages", Some("CAP_SYS_NICE")),
    // Obsolete or host-global.
    ("syslog", Some("CAP_SYSLOG")),
    ("nfsservctl", None),
    ("sysfs", None),
    ("_sysctl", None),
    ("uselib", None),
    ("ustat", None),
    ("vm86", None),
    ("vm86old", None),
];

/// `clone` flags that create namespaces: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET (linux/sched.h). Each gets its own rule because seccomp can only test
/// `(arg & mask) == value`, and a deny list needs "any of these bits".
const CLONE_NS_FLAGS: [u64; 7] = [
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn architectures() -> Vec<&'static str> {
    if cfg!(target_arch = "x86_64") {
        vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        vec![]
    }
}

fn holds(caps: CapMask, name: &str) -> bool {
    number(name).is_some_and(|n| caps & (1 << n) != 0)
}

/// The `linux.seccomp` object of the default profile for a container holding `caps`.
pub fn runtime_default(caps: CapMask) -> Value {
    let denied: Vec<&str> = DENIED
        .iter()
        .filter(|(_, cap)| cap.is_none_or(|c| !holds(caps, c)))
        .map(|(name, _)| *name)
        .collect();
    let mut syscalls = vec![
        json!({"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}),
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
    ];
    if !holds(caps, "CAP_SYS_ADMIN") {
        // x86_64 and arm64 both pass clone's flags in argument 0.
        for flag in CLONE_NS_FLAGS {
            syscalls.push(json!({
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(),
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(profile: &Value) -> Vec<String> {
        profile["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn unprivileged_profile_blocks_namespace_mount_and_keyring_syscalls() {
        let p = runtime_default(0);
        let d = denied(&p);
        for s in ["unshare", "mount", "keyctl", "setns", "bpf", "kexec_load"] {
            assert!(d.contains(&s.to_string()), "{s} not denied");
        }
        assert_eq!(p["defaultAction"], "SCMP_ACT_ALLOW");
        // One rule per namespace flag of clone.
        assert_eq!(
            p["syscalls"].as_array().unwrap().len(),
            2 + CLONE_NS_FLAGS.len()
        );
    }

    #[test]
    fn capabilities_reopen_their_syscalls() {
        let sys_admin = 1u64 << number("CAP_SYS_ADMIN").unwrap();
        let p = runtime_default(sys_admin);
        let d = denied(&p);
        assert!(!d.contains(&"mount".to_string()) && !d.contains(&"unshare".to_string()));
        assert!(d.contains(&"keyctl".to_string()) && d.contains(&"reboot".to_string()));
        assert_eq!(p["syscalls"].as_array().unwrap().len(), 2);
    }
}
