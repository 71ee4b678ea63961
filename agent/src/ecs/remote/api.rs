//! Discovery of the cluster through the ECS and EC2 APIs (aws-sdk-ecs, aws-sdk-ec2):
//! `ListTasks` (paginated, desired status RUNNING) → `DescribeTasks` (100 per call) →
//! `DescribeContainerInstances` (100 per call) → `DescribeInstances` (the container
//! instances' EC2 addresses, 100 ids per call). Every call is one of the IAM actions
//! the README documents; errors name the action that failed.

use std::net::IpAddr;

use aws_sdk_ecs::types::{Task, TransportProtocol};

pub use crate::aws::error::{ApiError as DiscoveryError, classify};

use super::index::{ContainerInfo, Discovered, InstanceInfo, TaskInfo, family_revision, service_of};
use crate::flow::EcsLabels;
use crate::flow::Protocol;

/// Items per Describe* call (the APIs' limit for DescribeTasks/DescribeContainerInstances).
const BATCH: usize = 100;
/// Pages of ListTasks per refresh, at most (100 tasks each: 100,000 tasks, the index's own
/// cap). A listing with pages left is reported truncated (`list_tasks_truncated`).
pub const MAX_PAGES: usize = 1_000;

/// A source of ListTasks pages: (task ARNs, whether another page follows).
pub trait PageSource {
    fn next_page(
        &mut self,
    ) -> impl std::future::Future<Output = Option<Result<(Vec<String>, bool), DiscoveryError>>> + Send;
}

/// ListTasks driven by its `nextToken` (one call per page).
struct ListTasksPages<'a> {
    ecs: &'a aws_sdk_ecs::Client,
    cluster: &'a str,
    next_token: Option<String>,
    done: bool,
}

impl PageSource for ListTasksPages<'_> {
    async fn next_page(&mut self) -> Option<Result<(Vec<String>, bool), DiscoveryError>> {
        if self.done {
            return None;
        }
        let out = self
            .ecs
            .list_tasks()
            .cluster(self.cluster)
            .desired_status("RUNNING".into())
            .set_next_token(self.next_token.take())
            .send()
            .await;
        Some(match out {
            Ok(p) => {
                self.next_token = p.next_token().filter(|t| !t.is_empty()).map(str::to_string);
                self.done = self.next_token.is_none();
                Ok((p.task_arns().to_vec(), !self.done))
            }
            Err(e) => {
                self.done = true;
                Err(classify("ecs:ListTasks", self.cluster, e))
            }
        })
    }
}

/// Every ARN of at most `max_pages` pages, and whether pages were left (the listing is cut).
pub async fn list_capped(
    src: &mut impl PageSource,
    max_pages: usize,
) -> Result<(Vec<String>, bool), DiscoveryError> {
    let mut arns = Vec::new();
    let mut pages = 0;
    while let Some(page) = src.next_page().await {
        let (page, more) = page?;
        arns.extend(page);
        pages += 1;
        if !more {
            return Ok((arns, false));
        }
        if pages >= max_pages {
            return Ok((arns, true));
        }
    }
    Ok((arns, false))
}

/// The API clients, built once from the SDK's standard configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ecs: aws_sdk_ecs::Client,
    pub ec2: aws_sdk_ec2::Client,
}

/// Lists and describes every running task of `cluster` and its container instances.
pub async fn discover(c: &Clients, cluster: &str) -> Result<Discovered, DiscoveryError> {
    let mut pages = ListTasksPages { ecs: &c.ecs, cluster, next_token: None, done: false };
    let (arns, list_truncated) = list_capped(&mut pages, MAX_PAGES).await?;
    let mut tasks = Vec::with_capacity(arns.len());
    for chunk in arns.chunks(BATCH) {
        let out = c
            .ecs
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| classify("ecs:DescribeTasks", cluster, e))?;
        tasks.extend(out.tasks().iter().map(|t| task_info(cluster, t)));
    }
    let mut ci_arns: Vec<String> = tasks.iter().filter_map(|t| t.container_instance_arn.clone()).collect();
    ci_arns.sort();
    ci_arns.dedup();
    let mut instances = Vec::with_capacity(ci_arns.len());
    for chunk in ci_arns.chunks(BATCH) {
        let out = c
            .ecs
            .describe_container_instances()
            .cluster(cluster)
            .set_container_instances(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| classify("ecs:DescribeContainerInstances", cluster, e))?;
        for ci in out.container_instances() {
            let Some(arn) = ci.container_instance_arn() else { continue };
            let az = ci
                .attributes()
                .iter()
                .find(|a| a.name() == "ecs.availability-zone")
                .and_then(|a| a.value())
                .map(str::to_string);
            instances.push(InstanceInfo {
                arn: arn.to_string(),
                ec2_instance_id: ci.ec2_instance_id().map(str::to_string),
                availability_zone: az,
                addrs: Vec::new(),
            });
        }
    }
    instance_addresses(c, cluster, &mut instances).await?;
    Ok(Discovered { cluster: cluster.to_string(), tasks, instances, list_truncated })
}

/// Fills each container instance's EC2 addresses (and its AZ when ECS did not say).
async fn instance_addresses(
    c: &Clients,
    cluster: &str,
    instances: &mut [InstanceInfo],
) -> Result<(), DiscoveryError> {
    let ids: Vec<String> = instances.iter().filter_map(|i| i.ec2_instance_id.clone()).collect();
    for chunk in ids.chunks(BATCH) {
        let out = c
            .ec2
            .describe_instances()
            .set_instance_ids(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| classify("ec2:DescribeInstances", cluster, e))?;
        for inst in out.reservations().iter().flat_map(|r| r.instances()) {
            let Some(target) =
                instances.iter_mut().find(|i| i.ec2_instance_id.as_deref() == inst.instance_id())
            else {
                continue;
            };
            let mut addrs: Vec<IpAddr> =
                inst.private_ip_address().and_then(|a| a.parse().ok()).into_iter().collect();
            for ni in inst.network_interfaces() {
                addrs.extend(
                    ni.private_ip_addresses()
                        .iter()
                        .filter_map(|p| p.private_ip_address()?.parse::<IpAddr>().ok()),
                );
                addrs.extend(
                    ni.ipv6_addresses().iter().filter_map(|p| p.ipv6_address()?.parse::<IpAddr>().ok()),
                );
            }
            addrs.sort();
            addrs.dedup();
            target.addrs = addrs;
            if target.availability_zone.is_none() {
                target.availability_zone =
                    inst.placement().and_then(|p| p.availability_zone()).map(str::to_string);
            }
        }
    }
    Ok(())
}

/// One DescribeTasks entry → [`TaskInfo`].
pub fn task_info(cluster: &str, t: &Task) -> TaskInfo {
    let (family, revision) = t.task_definition_arn().map(family_revision).unwrap_or_default();
    let mut eni_addrs: Vec<IpAddr> = Vec::new();
    let mut awsvpc = false;
    for a in t.attachments().iter().filter(|a| a.r#type() == Some("ElasticNetworkInterface")) {
        awsvpc = true;
        for d in a.details() {
            if matches!(d.name(), Some("privateIPv4Address") | Some("ipv6Address"))
                && let Some(ip) = d.value().and_then(|v| v.parse().ok())
            {
                eni_addrs.push(ip);
            }
        }
    }
    for c in t.containers() {
        for ni in c.network_interfaces() {
            awsvpc = true;
            eni_addrs.extend(ni.private_ipv4_address().and_then(|v| v.parse::<IpAddr>().ok()));
            eni_addrs.extend(ni.ipv6_address().and_then(|v| v.parse::<IpAddr>().ok()));
        }
    }
    eni_addrs.sort();
    eni_addrs.dedup();
    let containers = t
        .containers()
        .iter()
        .map(|c| ContainerInfo {
            name: c.name().map(str::to_string),
            runtime_id: c.runtime_id().map(str::to_string),
            image: c.image().map(str::to_string),
            bindings: c
                .network_bindings()
                .iter()
                .filter_map(|b| {
                    let proto = match b.protocol() {
                        Some(TransportProtocol::Udp) => Protocol::Udp,
                        _ => Protocol::Tcp,
                    };
                    let cp = u16::try_from(b.container_port()?).ok()?;
                    Some((proto, cp, b.host_port().and_then(|p| u16::try_from(p).ok())))
                })
                .collect(),
        })
        .collect();
    TaskInfo {
        labels: EcsLabels {
            cluster: Some(cluster_name(t.cluster_arn()).unwrap_or(cluster).to_string()),
            task_arn: t.task_arn().map(str::to_string),
            task_family: family,
            task_revision: revision,
            service: t.group().and_then(service_of),
            launch_type: t.launch_type().map(|l| l.as_str().to_string()).filter(|s| !s.is_empty()),
            availability_zone: t.availability_zone().map(str::to_string),
            network_mode: awsvpc.then(|| "awsvpc".to_string()),
            ..Default::default()
        },
        eni_addrs,
        container_instance_arn: t.container_instance_arn().map(str::to_string),
        containers,
    }
}

/// `prod` from `arn:aws:ecs:us-east-1:123:cluster/prod`.
fn cluster_name(arn: Option<&str>) -> Option<&str> {
    arn?.rsplit_once(":cluster/").map(|(_, n)| n).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{Attachment, Container, KeyValuePair, LaunchType, NetworkBinding};

    #[test]
    fn describe_tasks_entries_become_task_infos() {
        let awsvpc = Task::builder()
            .task_arn("arn:aws:ecs:us-east-1:1:task/prod/abc")
            .cluster_arn("arn:aws:ecs:us-east-1:1:cluster/prod")
            .task_definition_arn("arn:aws:ecs:us-east-1:1:task-definition/api:12")
            .group("service:checkout")
            .launch_type(LaunchType::Fargate)
            .availability_zone("us-east-1c")
            .attachments(
                Attachment::builder()
                    .r#type("ElasticNetworkInterface")
                    .details(KeyValuePair::builder().name("privateIPv4Address").value("10.0.3.4").build())
                    .details(KeyValuePair::builder().name("ipv6Address").value("2001:db8::4").build())
                    .details(KeyValuePair::builder().name("subnetId").value("subnet-1").build())
                    .build(),
            )
            .containers(Container::builder().name("api").runtime_id("r1").image("api:12").build())
            .build();
        let t = task_info("fallback", &awsvpc);
        assert_eq!(t.labels.cluster.as_deref(), Some("prod"));
        assert_eq!(
            (t.labels.task_family.as_deref(), t.labels.task_revision.as_deref()),
            (Some("api"), Some("12"))
        );
        assert_eq!(t.labels.service.as_deref(), Some("checkout"));
        assert_eq!(t.labels.launch_type.as_deref(), Some("FARGATE"));
        assert_eq!(t.labels.network_mode.as_deref(), Some("awsvpc"));
        assert_eq!(
            t.eni_addrs,
            vec!["10.0.3.4".parse::<IpAddr>().expect("v4"), "2001:db8::4".parse().expect("v6")]
        );

        let bridge = Task::builder()
            .task_arn("arn:aws:ecs:us-east-1:1:task/prod/def")
            .task_definition_arn("arn:aws:ecs:us-east-1:1:task-definition/web:3")
            .group("family:web")
            .container_instance_arn("ci-1")
            .containers(
                Container::builder()
                    .name("nginx")
                    .network_bindings(
                        NetworkBinding::builder()
                            .container_port(80)
                            .host_port(32768)
                            .protocol(TransportProtocol::Tcp)
                            .build(),
                    )
                    .network_bindings(
                        NetworkBinding::builder()
                            .container_port(53)
                            .host_port(53)
                            .protocol(TransportProtocol::Udp)
                            .build(),
                    )
                    .network_bindings(NetworkBinding::builder().container_port(-1).build())
                    .build(),
            )
            .build();
        let t = task_info("fallback", &bridge);
        assert_eq!(t.labels.cluster.as_deref(), Some("fallback"), "no cluster ARN: the one asked for");
        assert_eq!(t.labels.service, None, "not a service's task");
        assert_eq!(t.labels.network_mode, None, "bridge or host: not told by DescribeTasks");
        assert_eq!(t.container_instance_arn.as_deref(), Some("ci-1"));
        assert_eq!(
            t.containers[0].bindings,
            vec![(Protocol::Tcp, 80, Some(32768)), (Protocol::Udp, 53, Some(53))],
            "an invalid port is skipped"
        );
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;

    /// `pages` pages of one ARN each, the last one without a next token.
    struct Fake {
        left: usize,
        served: usize,
    }

    impl PageSource for Fake {
        async fn next_page(&mut self) -> Option<Result<(Vec<String>, bool), DiscoveryError>> {
            if self.left == 0 {
                return None;
            }
            self.left -= 1;
            self.served += 1;
            Some(Ok((vec![format!("arn:{}", self.served)], self.left > 0)))
        }
    }

    #[tokio::test]
    async fn a_listing_longer_than_the_cap_is_reported_truncated() {
        let mut f = Fake { left: MAX_PAGES + 500, served: 0 };
        let (arns, truncated) = list_capped(&mut f, MAX_PAGES).await.expect("list");
        assert!(truncated);
        assert_eq!((arns.len(), f.served), (MAX_PAGES, MAX_PAGES), "no page read beyond the cap");
    }

    #[tokio::test]
    async fn a_listing_that_ends_at_or_before_the_cap_is_complete() {
        for pages in [0, 1, 7, MAX_PAGES] {
            let mut f = Fake { left: pages, served: 0 };
            let (arns, truncated) = list_capped(&mut f, MAX_PAGES).await.expect("list");
            assert!(!truncated, "{pages} pages");
            assert_eq!(arns.len(), pages);
        }
        let mut f = Fake { left: 3, served: 0 };
        assert_eq!(list_capped(&mut f, 2).await.expect("list"), (vec!["arn:1".into(), "arn:2".into()], true));
    }
}
