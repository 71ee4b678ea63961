use super::*;
use crate::flow::Protocol;

const C: &str = "9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021";

#[test]
fn host_container_unknown_and_missing() {
    let r = LocalResolver::new("http://x", "test");
    let mut owners = HashMap::new();
    owners.insert(1, None);
    owners.insert(2, Some(CgroupOwner { container_id: C.into(), task_id: None }));
    owners.insert(3, Some(CgroupOwner { container_id: "f".repeat(64), task_id: None }));
    r.set_cgroups(CgroupIndex { owners, truncated: false, unreadable: 0 }, false);
    let mut snap = Snapshot { cluster: Some("flows".into()), ..Default::default() };
    snap.containers.insert(
        C.into(),
        Arc::new(EcsLabels {
            task_family: Some("web".into()),
            container_name: Some("web".into()),
            ..Default::default()
        }),
    );
    r.set_ecs(snap);
    assert_eq!(r.labels(Some(1), None, None).and_then(|l| l.container_name.clone()).as_deref(), Some("host"));
    assert_eq!(r.labels(Some(2), None, None).and_then(|l| l.task_family.clone()).as_deref(), Some("web"));
    let unknown = r.labels(Some(3), None, None).expect("labels");
    assert_eq!((unknown.task_family.as_deref(), unknown.cluster.as_deref()), (Some(UNKNOWN), Some("flows")));
    assert_eq!(
        r.labels(Some(4), None, None).and_then(|l| l.container_name.clone()).as_deref(),
        Some(UNKNOWN)
    );
    assert_eq!(r.labels(None, None, None), None);
    let mut rec = FlowRecord::test(Protocol::Tcp, 1, false);
    rec.cgroup_id = Some(2);
    r.enrich(&mut rec);
    let v = serde_json::to_value(&rec).expect("json");
    assert_eq!(v["local"]["ecs"]["task_family"], "web");
    assert!(v["remote"].get("ecs").is_none());
    assert_eq!(r.status().containers, 1);
}

#[test]
fn process_and_namespace_fallbacks_when_the_cgroup_says_host() {
    let r = LocalResolver::new("http://x", "test");
    r.set_cgroups(CgroupIndex { owners: HashMap::from([(1, None)]), truncated: false, unreadable: 0 }, false);
    let (web2, pause, lone) = ("b".repeat(64), "c".repeat(64), "d".repeat(64));
    let mut procs = ProcIndex::default();
    procs.by_pid.insert(42, CgroupOwner { container_id: C.into(), task_id: None });
    // An awsvpc task: two app containers and the pause container share namespace 7.
    procs.by_netns.insert(7, BTreeSet::from([C.to_string(), web2.clone(), pause.clone()]));
    procs.by_netns.insert(8, BTreeSet::from([C.to_string(), pause.clone()]));
    procs.by_netns.insert(9, BTreeSet::from([lone.clone()]));
    r.set_procs(procs);
    let mut snap = Snapshot { cluster: Some("flows".into()), ..Default::default() };
    for (id, name) in [(C, "web"), (web2.as_str(), "sidecar"), (pause.as_str(), PAUSE_CONTAINER)] {
        snap.containers.insert(
            id.into(),
            Arc::new(EcsLabels {
                task_arn: Some("arn:t".into()),
                container_name: Some(name.into()),
                container_id: Some(id.into()),
                ..Default::default()
            }),
        );
    }
    r.set_ecs(snap);
    let name = |l: Option<Arc<EcsLabels>>| l.and_then(|l| l.container_name.clone());
    assert_eq!(name(r.labels(Some(1), Some(42), Some(7))).as_deref(), Some("web"), "pid first");
    let task = r.labels(Some(1), Some(99), Some(7)).expect("labels");
    assert_eq!((task.task_arn.as_deref(), task.container_name.as_deref()), (Some("arn:t"), Some(UNKNOWN)));
    assert_eq!(task.container_id, None);
    assert_eq!(name(r.labels(Some(1), None, Some(8))).as_deref(), Some("web"), "pause is not listed");
    let unknown = r.labels(None, None, Some(9)).expect("labels");
    assert_eq!(unknown.container_id.as_deref(), Some(lone.as_str()));
    assert_eq!(name(r.labels(Some(1), Some(99), Some(10))).as_deref(), Some("host"));
    assert_eq!(r.status().container_netns, 3);
}

#[test]
fn walks_a_directory_tree_by_inode() {
    let root = std::env::temp_dir().join(format!("eddy-cg-{}", std::process::id()));
    let dir = root.join("ecs").join("4b5c6d7e8f9041a2b3c4d5e6f7a8b9c0").join(C);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let idx = CgroupIndex::walk(&root);
    let ino = std::fs::metadata(&dir).expect("meta").ino();
    assert_eq!(idx.owners.get(&ino).cloned().flatten().map(|o| o.container_id).as_deref(), Some(C));
    assert_eq!(idx.owners.get(&std::fs::metadata(&root).expect("meta").ino()), Some(&None));
    std::fs::remove_dir_all(root).ok();
}
