//! The AWS SDK configuration every AWS client of the agent is built from: region, credentials and
//! endpoint from the standard AWS environment (`AWS_REGION`, `AWS_ENDPOINT_URL`, the task role,
//! ...), bounded timeouts, and in FIPS mode FIPS endpoints with the FIPS TLS client
//! ([`crate::fips::sdk_loader`]).

use std::time::Duration;

/// How long a connection to an AWS endpoint may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The SDK configuration; `region_hint` is used only when the environment names no region.
/// `timeout` bounds each operation, retries included.
pub async fn config(region_hint: Option<String>, timeout: Duration, fips: bool) -> aws_config::SdkConfig {
    let env_region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .build(),
    );
    if let Some(r) = env_region.or(region_hint) {
        loader = loader.region(aws_config::Region::new(r));
    }
    crate::fips::sdk_loader(loader, fips).load().await
}
