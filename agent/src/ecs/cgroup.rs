//! Container and task ids from cgroup paths, in the layouts ECS hosts use:
//! - cgroup v2 with systemd: `/ecstasks.slice/ecstasks-<task>.slice/docker-<id>.scope`
//! - cgroup v1 (or v2 without systemd): `/ecs/<task>/<id>`
//! - plain Docker: `/docker/<id>`, `/system.slice/docker-<id>.scope`
//!
//! A container id is 64 lowercase hex digits; a task id is 32 hex digits (dashes
//! in `ecstasks-…` slice names are systemd escapes and are removed).

/// What a cgroup path says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupOwner {
    pub container_id: String,
    /// ECS task id (the last part of the task ARN), when the path has one.
    pub task_id: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn task_id(s: &str) -> Option<String> {
    let id: String = s.chars().filter(|c| *c != '-').collect();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Parses a cgroup path (as in `/proc/<pid>/cgroup` or relative to a mount).
pub fn parse(path: &str) -> Option<CgroupOwner> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate().rev() {
        let id = part.strip_prefix("docker-").and_then(|p| p.strip_suffix(".scope")).unwrap_or(part);
        if !is_container_id(id) {
            continue;
        }
        let task = if i >= 1 {
            let parent = parts[i - 1];
            if let Some(t) = parent.strip_prefix("ecstasks-").and_then(|p| p.strip_suffix(".slice")) {
                task_id(t)
            } else if i >= 2 && parts[i - 2] == "ecs" {
                task_id(parent)
            } else {
                None
            }
        } else {
            None
        };
        return Some(CgroupOwner { container_id: id.to_string(), task_id: task });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021";
    const T: &str = "4b5c6d7e8f9041a2b3c4d5e6f7a8b9c0";

    #[test]
    fn parses_every_ecs_layout() {
        let want = Some(CgroupOwner { container_id: C.into(), task_id: Some(T.into()) });
        assert_eq!(parse(&format!("/ecstasks.slice/ecstasks-{T}.slice/docker-{C}.scope")), want);
        assert_eq!(parse(&format!("/ecs/{T}/{C}")), want);
        assert_eq!(parse(&format!("0::/ecs/{T}/{C}")), want, "a /proc/<pid>/cgroup line");
        assert_eq!(
            parse(&format!(
                "/ecstasks.slice/ecstasks-4b5c6d7e-8f90-41a2-b3c4-d5e6f7a8b9c0.slice/docker-{C}.scope"
            )),
            want
        );
        let docker = Some(CgroupOwner { container_id: C.into(), task_id: None });
        assert_eq!(parse(&format!("/docker/{C}")), docker);
        assert_eq!(parse(&format!("/system.slice/docker-{C}.scope")), docker);
    }

    #[test]
    fn rejects_non_containers() {
        assert_eq!(parse("/"), None);
        assert_eq!(parse("/user.slice/user-0.slice/session-1.scope"), None);
        assert_eq!(parse("/ecs/abc/def"), None);
        assert_eq!(parse(&format!("/docker/{}", C.to_uppercase())), None);
        assert_eq!(parse(&format!("/docker/{}", &C[..63])), None);
    }
}
