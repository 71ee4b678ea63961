use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn task(family: &str, eni: &[&str], instance: Option<&str>, containers: Vec<ContainerInfo>) -> TaskInfo {
    TaskInfo {
        labels: EcsLabels {
            cluster: Some("prod".into()),
            task_arn: Some(format!("arn:aws:ecs:us-east-1:1:task/prod/{family}")),
            task_family: Some(family.into()),
            task_revision: Some("3".into()),
            service: Some(format!("{family}-svc")),
            ..Default::default()
        },
        eni_addrs: eni.iter().map(|a| ip(a)).collect(),
        container_instance_arn: instance.map(str::to_string),
        containers,
    }
}

fn container(name: &str, bindings: Vec<(Protocol, u16, Option<u16>)>) -> ContainerInfo {
    ContainerInfo {
        name: Some(name.into()),
        runtime_id: Some(format!("{name}-id")),
        image: Some(format!("{name}:1")),
        bindings,
    }
}

fn index() -> RemoteIndex {
    RemoteIndex::build(Discovered {
        cluster: "prod".into(),
        tasks: vec![
            task(
                "api",
                &["10.0.2.7", "2001:db8::7"],
                None,
                vec![container("api", vec![(Protocol::Tcp, 9000, None)]), container("envoy", vec![])],
            ),
            task("solo", &["10.0.2.8"], None, vec![container("solo", vec![])]),
            task(
                "web",
                &[],
                Some("ci-1"),
                vec![container(
                    "nginx",
                    vec![(Protocol::Tcp, 80, Some(32768)), (Protocol::Udp, 53, Some(53))],
                )],
            ),
        ],
        instances: vec![InstanceInfo {
            arn: "ci-1".into(),
            ec2_instance_id: Some("i-1".into()),
            availability_zone: Some("us-east-1b".into()),
            addrs: vec![ip("10.0.1.10")],
        }],
        list_truncated: false,
    })
}

#[test]
fn awsvpc_address_names_the_task_and_the_container_by_port() {
    let idx = index();
    let l = idx.lookup(Protocol::Tcp, ip("10.0.2.7"), 9000).expect("api");
    assert_eq!(
        (l.task_family.as_deref(), l.container_name.as_deref(), l.service.as_deref()),
        (Some("api"), Some("api"), Some("api-svc"))
    );
    assert_eq!(l.container_id.as_deref(), Some("api-id"));
    let v6 = idx.lookup(Protocol::Tcp, ip("2001:db8::7"), 9000).expect("v6");
    assert_eq!(v6.task_family.as_deref(), Some("api"));
    // An ephemeral port of a two-container task: the task is known, the container is not.
    let client = idx.lookup(Protocol::Tcp, ip("10.0.2.7"), 41234).expect("client");
    assert_eq!(client.container_name.as_deref(), Some(UNKNOWN));
    assert_eq!(client.container_id, None);
    // One container: it is the one.
    let solo = idx.lookup(Protocol::Tcp, ip("10.0.2.8"), 41234).expect("solo");
    assert_eq!(solo.container_name.as_deref(), Some("solo"));
}

#[test]
fn host_ports_on_a_container_instance_and_the_instance_itself() {
    let idx = index();
    let l = idx.lookup(Protocol::Tcp, ip("10.0.1.10"), 32768).expect("binding");
    assert_eq!((l.task_family.as_deref(), l.container_name.as_deref()), (Some("web"), Some("nginx")));
    assert_eq!(l.availability_zone.as_deref(), Some("us-east-1b"), "AZ from the container instance");
    let dns = idx.lookup(Protocol::Udp, ip("10.0.1.10"), 53).expect("udp binding");
    assert_eq!(dns.container_name.as_deref(), Some("nginx"));
    assert_eq!(idx.lookup(Protocol::Tcp, ip("10.0.1.10"), 53).and_then(|l| l.task_family), None);
    let host = idx.lookup(Protocol::Tcp, ip("10.0.1.10"), 22).expect("instance");
    assert_eq!((host.container_name.as_deref(), host.cluster.as_deref()), (Some("host"), Some("prod")));
    assert_eq!(idx.lookup(Protocol::Tcp, ip("192.0.2.1"), 443), None, "not the cluster's");
    assert_eq!((idx.tasks(), idx.instances(), idx.addresses()), (3, 1, 6));
}

#[test]
fn completes_local_labels_with_service_and_zone() {
    let idx = index();
    let mut local = std::sync::Arc::new(EcsLabels {
        task_arn: Some("arn:aws:ecs:us-east-1:1:task/prod/web".into()),
        ..Default::default()
    });
    let shared = local.clone();
    idx.complete(&mut local);
    assert_eq!(shared.service, None, "a copy was completed, not the shared labels");
    assert_eq!(
        (local.service.as_deref(), local.availability_zone.as_deref()),
        (Some("web-svc"), Some("us-east-1b"))
    );
    let mut done = local.clone();
    idx.complete(&mut done);
    assert!(std::sync::Arc::ptr_eq(&done, &local), "complete labels are not copied");
    let mut other = std::sync::Arc::new(EcsLabels { task_arn: Some("nope".into()), ..Default::default() });
    idx.complete(&mut other);
    assert_eq!(other.service, None);
}

#[test]
fn arn_parsing() {
    assert_eq!(
        family_revision("arn:aws:ecs:us-east-1:1:task-definition/web:7"),
        (Some("web".into()), Some("7".into()))
    );
    assert_eq!(family_revision("web"), (Some("web".into()), None));
    assert_eq!(family_revision(""), (None, None));
    assert_eq!(service_of("service:checkout"), Some("checkout".into()));
    assert_eq!(service_of("family:web"), None);
    assert_eq!(region_of("arn:aws-us-gov:ecs:us-gov-west-1:1:cluster/x"), Some("us-gov-west-1".into()));
    assert_eq!(region_of("not-an-arn"), None);
}
