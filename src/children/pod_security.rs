//! The Pod Security Standards, "baseline" and "restricted", as checks of a pod template: each
//! rule by the name the Kubernetes documentation gives it. A v1.20 API server has no
//! PodSecurity admission, so the operator checks its own pods: the tests check every child
//! pod template, and the `Restricted` condition of a set reports what this finds.

use k8s_openapi::api::core::v1::{Capabilities, Container, PodSpec, PodTemplateSpec};

/// One rule a pod template breaks: the rule's name and what breaks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// Every rule of the two profiles, in the documentation's order.
pub const RULES: [&str; 17] = [
    "HostProcess",
    "Host Namespaces",
    "Privileged Containers",
    "Capabilities",
    "HostPath Volumes",
    "Host Ports",
    "AppArmor",
    "SELinux",
    "/proc Mount Type",
    "Seccomp",
    "Sysctls",
    "Volume Types",
    "Privilege Escalation",
    "Running as Non-root",
    "Running as Non-root user",
    "Seccomp (restricted)",
    "Capabilities (restricted)",
];

/// Capabilities a baseline pod may add (the container runtimes' default set).
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Every rule of "restricted" (which includes "baseline") the template breaks.
pub fn restricted_violations(template: &PodTemplateSpec) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut push = |rule: &'static str, detail: String| out.push(Violation { rule, detail });
    let Some(pod) = &template.spec else {
        return out;
    };
    let containers: Vec<&Container> = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .collect();
    let pod_sc = pod.security_context.clone().unwrap_or_default();

    // Baseline.
    let host_process = pod_sc
        .windows_options
        .as_ref()
        .and_then(|w| w.host_process)
        .unwrap_or(false)
        || containers.iter().any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.windows_options.as_ref())
                .and_then(|w| w.host_process)
                .unwrap_or(false)
        });
    if host_process {
        push("HostProcess", "windowsOptions.hostProcess is true".into());
    }
    for (field, set) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        if set == Some(true) {
            push("Host Namespaces", format!("{field} is true"));
        }
    }
    for c in &containers {
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            push(
                "Privileged Containers",
                format!("container {} is privileged", c.name),
            );
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        for add in caps.add.iter().flatten() {
            if !BASELINE_CAPABILITIES.contains(&add.as_str()) {
                push("Capabilities", format!("container {} adds {add}", c.name));
            }
        }
        for port in c.ports.iter().flatten() {
            if port.host_port.is_some_and(|p| p != 0) {
                push(
                    "Host Ports",
                    format!("container {} uses a hostPort", c.name),
                );
            }
        }
        if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
            push(
                "/proc Mount Type",
                format!("container {} sets procMount", c.name),
            );
        }
    }
    for v in pod.volumes.iter().flatten() {
        if v.host_path.is_some() {
            push(
                "HostPath Volumes",
                format!("volume {} is a hostPath", v.name),
            );
        }
    }
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    for (key, value) in &annotations {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && value != "runtime/default"
            && !value.starts_with("localhost/")
        {
            push("AppArmor", format!("{key} is {value}"));
        }
    }
    let selinux =
        std::iter::once(pod_sc.se_linux_options.clone()).chain(containers.iter().map(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.se_linux_options.clone())
        }));
    for options in selinux.flatten() {
        let allowed_type = options.type_.as_deref().is_none_or(|t| {
            ["", "container_t", "container_init_t", "container_kvm_t"].contains(&t)
        });
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
        if !allowed_type || set(&options.user) || set(&options.role) {
            push(
                "SELinux",
                "seLinuxOptions sets a user, a role or a type".into(),
            );
        }
    }
    let unconfined = |t: Option<&str>| t == Some("Unconfined");
    if unconfined(pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()))
        || containers.iter().any(|c| {
            unconfined(
                c.security_context
                    .as_ref()
                    .and_then(|s| s.seccomp_profile.as_ref())
                    .map(|p| p.type_.as_str()),
            )
        })
    {
        push("Seccomp", "a seccomp profile is Unconfined".into());
    }
    for sysctl in pod_sc.sysctls.iter().flatten() {
        if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
            push("Sysctls", format!("{} is not a safe sysctl", sysctl.name));
        }
    }

    // Restricted.
    for v in pod.volumes.iter().flatten() {
        let allowed = v.config_map.is_some()
            || v.csi.is_some()
            || v.downward_api.is_some()
            || v.empty_dir.is_some()
            || v.ephemeral.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.secret.is_some();
        if !allowed {
            push(
                "Volume Types",
                format!("volume {} is of a type not allowed", v.name),
            );
        }
    }
    for c in &containers {
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.allow_privilege_escalation != Some(false) {
            push(
                "Privilege Escalation",
                format!(
                    "container {} does not set allowPrivilegeEscalation: false",
                    c.name
                ),
            );
        }
        let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root);
        if non_root != Some(true) {
            push(
                "Running as Non-root",
                format!("container {} does not run with runAsNonRoot: true", c.name),
            );
        }
        if sc.run_as_user.or(pod_sc.run_as_user) == Some(0) {
            push(
                "Running as Non-root user",
                format!("container {} runs as user 0", c.name),
            );
        }
        let profile = sc
            .seccomp_profile
            .as_ref()
            .or(pod_sc.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str());
        if !matches!(profile, Some("RuntimeDefault" | "Localhost")) {
            push(
                "Seccomp (restricted)",
                format!(
                    "container {} has no RuntimeDefault or Localhost seccomp profile",
                    c.name
                ),
            );
        }
        if !drops_all_adds_at_most_bind(sc.capabilities.as_ref()) {
            push(
                "Capabilities (restricted)",
                format!(
                    "container {} does not drop ALL capabilities, or adds one other than NET_BIND_SERVICE",
                    c.name
                ),
            );
        }
    }
    out
}

fn drops_all_adds_at_most_bind(caps: Option<&Capabilities>) -> bool {
    let Some(caps) = caps else { return false };
    caps.drop.iter().flatten().any(|d| d == "ALL")
        && caps.add.iter().flatten().all(|a| a == "NET_BIND_SERVICE")
}

/// Whether the pod mounts a ServiceAccount token (it does unless told not to).
pub fn mounts_service_account_token(pod: &PodSpec) -> bool {
    pod.automount_service_account_token != Some(false)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Capabilities, ContainerPort, HostPathVolumeSource, PodSecurityContext, SeccompProfile,
        SecurityContext, Sysctl, Volume,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn restricted() -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta::default()),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    security_context: Some(SecurityContext {
                        allow_privilege_escalation: Some(false),
                        capabilities: Some(Capabilities {
                            drop: Some(vec!["ALL".into()]),
                            add: None,
                        }),
                        ..SecurityContext::default()
                    }),
                    ..Container::default()
                }],
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(65532),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        localhost_profile: None,
                    }),
                    ..PodSecurityContext::default()
                }),
                ..PodSpec::default()
            }),
        }
    }

    fn rules(t: &PodTemplateSpec) -> Vec<&'static str> {
        restricted_violations(t).iter().map(|v| v.rule).collect()
    }

    /// Each rule is caught by name when broken, one at a time.
    #[test]
    fn every_rule_catches_what_breaks_it() {
        assert!(
            rules(&restricted()).is_empty(),
            "{:?}",
            restricted_violations(&restricted())
        );
        type Break = Box<dyn Fn(&mut PodSpec)>;
        fn container(p: &mut PodSpec) -> &mut SecurityContext {
            p.containers[0]
                .security_context
                .get_or_insert_with(Default::default)
        }
        let cases: Vec<(&str, Break)> = vec![
            ("Host Namespaces", Box::new(|p| p.host_network = Some(true))),
            ("Host Namespaces", Box::new(|p| p.host_pid = Some(true))),
            ("Host Namespaces", Box::new(|p| p.host_ipc = Some(true))),
            (
                "Privileged Containers",
                Box::new(|p| container(p).privileged = Some(true)),
            ),
            (
                "Capabilities",
                Box::new(move |p| {
                    container(p).capabilities = Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: Some(vec!["SYS_ADMIN".into()]),
                    })
                }),
            ),
            (
                "HostPath Volumes",
                Box::new(|p| {
                    p.volumes = Some(vec![Volume {
                        name: "h".into(),
                        host_path: Some(HostPathVolumeSource {
                            path: "/".into(),
                            type_: None,
                        }),
                        ..Volume::default()
                    }])
                }),
            ),
            (
                "Host Ports",
                Box::new(|p| {
                    p.containers[0].ports = Some(vec![ContainerPort {
                        container_port: 80,
                        host_port: Some(80),
                        ..ContainerPort::default()
                    }])
                }),
            ),
            (
                "/proc Mount Type",
                Box::new(|p| container(p).proc_mount = Some("Unmasked".into())),
            ),
            (
                "Seccomp",
                Box::new(move |p| {
                    container(p).seccomp_profile = Some(SeccompProfile {
                        type_: "Unconfined".into(),
                        localhost_profile: None,
                    })
                }),
            ),
            (
                "Sysctls",
                Box::new(|p| {
                    p.security_context.as_mut().unwrap().sysctls = Some(vec![Sysctl {
                        name: "kernel.msgmax".into(),
                        value: "1".into(),
                    }])
                }),
            ),
            (
                "Privilege Escalation",
                Box::new(|p| container(p).allow_privilege_escalation = None),
            ),
            (
                "Running as Non-root",
                Box::new(|p| p.security_context.as_mut().unwrap().run_as_non_root = None),
            ),
            (
                "Running as Non-root user",
                Box::new(|p| container(p).run_as_user = Some(0)),
            ),
            (
                "Seccomp (restricted)",
                Box::new(|p| p.security_context.as_mut().unwrap().seccomp_profile = None),
            ),
            (
                "Capabilities (restricted)",
                Box::new(|p| container(p).capabilities = None),
            ),
        ];
        for (rule, break_it) in cases {
            let mut t = restricted();
            break_it(t.spec.as_mut().unwrap());
            assert!(
                rules(&t).contains(&rule),
                "{rule}: {:?}",
                restricted_violations(&t)
            );
        }
        let mut t = restricted();
        t.metadata.as_mut().unwrap().annotations = Some(
            [(
                "container.apparmor.security.beta.kubernetes.io/app".to_owned(),
                "unconfined".to_owned(),
            )]
            .into(),
        );
        assert_eq!(rules(&t), vec!["AppArmor"]);
        let mut t = restricted();
        t.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "nfs".into(),
            nfs: Some(Default::default()),
            ..Volume::default()
        }]);
        assert_eq!(rules(&t), vec!["Volume Types"]);
    }
}
