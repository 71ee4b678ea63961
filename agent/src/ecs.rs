//! ECS identity of the local end of a flow (EC2 launch type, through the ECS agent's
//! introspection API).
//!
//! What: `local.ecs` on every flow record — cluster, task, family:revision, service
//! (when known), container, image, launch type, network mode — for traffic of
//! containers, and `container_name = "host"` for processes outside any container.
//!
//! How: the socket's cgroup v2 id (from the kernel) → the cgroup directory
//! ([`local::CgroupIndex`], a walk of the cgroup2 mount refreshed in the background)
//! → a container id parsed from its path ([`cgroup`]) → the task and container the
//! ECS agent reports at `/v1/tasks` ([`introspection`]), refreshed in the background
//! into an immutable snapshot. Lookups never block the data path; misses say
//! `unknown`.
//!
//! The remote end of intra-host traffic gets the peer flow's local labels ([`peers`]);
//! other remote ends are looked up among the cluster's tasks, discovered through the
//! ECS API in the background ([`remote`]), which also adds the service and
//! availability zone to local labels.
//!
//! Where the cgroup v2 id names no container (cgroup v1 and hybrid hosts), the owning
//! process's cgroup file or the socket's network namespace does ([`procs`]).
//!
//! On Fargate, [`fargate`] labels every flow with the agent's own task from task
//! metadata v4 ([`task_metadata`]); the sock_diag collector sees only that task's
//! network namespace.

pub mod cgroup;
pub mod environment;
pub mod fargate;
pub mod fetch;
pub mod introspection;
pub mod local;
pub mod peers;
pub mod procs;
pub mod refresh;
pub mod remote;
pub mod task_metadata;
