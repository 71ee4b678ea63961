//! AWS API errors, classified once for every caller (ECS discovery, EC2 resolution):
//! throttling backs off, access denied names the missing IAM action, the rest is counted.

use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};

/// Why an AWS API call failed, classified for counters, backoff and messages.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{action}: throttled ({message}); backing off")]
    Throttled { action: &'static str, message: String },
    #[error(
        "{action}: access denied ({message}). Grant the agent's task role the IAM action {action} \
         (see README, Deploy on ECS → IAM)"
    )]
    AccessDenied { action: &'static str, message: String },
    #[error("{action}: cluster {cluster} not found ({message}); set ecs_cluster or check the region")]
    ClusterNotFound { action: &'static str, cluster: String, message: String },
    #[error("{action}: cannot reach the API endpoint: {message}")]
    Unreachable { action: &'static str, message: String },
    #[error("{action}: {message}")]
    Api { action: &'static str, message: String },
}

impl ApiError {
    /// Counter name for `/status`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Throttled { .. } => "throttled",
            ApiError::AccessDenied { .. } => "access_denied",
            ApiError::ClusterNotFound { .. } => "cluster_not_found",
            ApiError::Unreachable { .. } => "unreachable",
            ApiError::Api { .. } => "errors",
        }
    }
}

pub fn classify<E, R>(action: &'static str, cluster: &str, e: SdkError<E, R>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().unwrap_or_default().to_string();
    let message = match e.message() {
        Some(m) => format!("{code}: {m}"),
        None => error_chain(&e),
    };
    match code.as_str() {
        "ThrottlingException" | "Throttling" | "RequestLimitExceeded" | "TooManyRequestsException" => {
            ApiError::Throttled { action, message }
        }
        "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" => {
            ApiError::AccessDenied { action, message }
        }
        "ClusterNotFoundException" => {
            ApiError::ClusterNotFound { action, cluster: cluster.to_string(), message }
        }
        _ => match e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                ApiError::Unreachable { action, message }
            }
            _ => ApiError::Api { action, message },
        },
    }
}

/// The error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
