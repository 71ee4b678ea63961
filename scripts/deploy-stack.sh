#!/usr/bin/env bash
# Deploys (creates or updates) the Eddy CloudFormation stack (cloudformation/eddy.yaml): a DAEMON service
# running eddy-agent on every EC2 container instance of a cluster, its roles and log group. Prints the
# stack outputs. With --delete, removes the stack instead.
#
# Usage: scripts/deploy-stack.sh --cluster NAME --agent-image URI --region REGION [options]
#        scripts/deploy-stack.sh --delete [--stack-name NAME] --region REGION
#   --cluster NAME              existing ECS cluster
#   --agent-image URI           eddy-agent image
#   --region REGION             e.g. us-east-1, us-gov-west-1 (default: $AWS_REGION)
#   --stack-name NAME           default eddy
#   --fips auto|on|off          eddy-fips-proxy sidecar and FIPS endpoints (default auto: on in GovCloud)
#   --fips-proxy-image URI      eddy-fips-proxy image (required when FIPS is on)
#   --capabilities SET          sys-admin (default) or bpf (see cloudformation/eddy.yaml)
#   --otlp-endpoint URL         EDDY_OTLP_ENDPOINT
#   --otlp-headers-secret ARN   Secrets Manager / SSM ARN holding EDDY_OTLP_HEADERS
#   --log-level LEVEL           error|warn|info|debug|trace (default info)
#   --log-retention-days N      default 30
#   --static-tags LIST          tags on every flow record (EDDY_TAGS), e.g. env:prod,team:payments
#   --tag KEY=VALUE             stack tag, propagated to the stack's resources (repeatable)
#   --template FILE             default cloudformation/eddy.yaml
#   --endpoint-url URL          passed to every aws command (e.g. a local emulator for tests)
#   --profile NAME              AWS CLI profile
#   --no-wait                   with --delete: do not wait for the deletion to finish
# Environment: AWS_CLI (default: aws from PATH). Needs the AWS CLI (v1 or v2).
set -euo pipefail

usage() { sed -n '2,/^# Environment/p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
  echo "deploy-stack.sh: $*" >&2
  echo "(run with --help for usage)" >&2
  exit 2
}

here="$(cd "$(dirname "$0")/.." && pwd)"
stack="eddy" cluster="" agent_image="" region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}" fips="auto"
proxy_image="" caps="sys-admin" otlp_endpoint="" otlp_secret="" log_level="info" retention="30"
static_tags="" template="$here/cloudformation/eddy.yaml" delete=0 wait=1 aws_args=() tags=()

need_value() { [ "$#" -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --cluster) need_value "$@"; cluster="$2"; shift 2 ;;
    --agent-image) need_value "$@"; agent_image="$2"; shift 2 ;;
    --region) need_value "$@"; region="$2"; shift 2 ;;
    --stack-name) need_value "$@"; stack="$2"; shift 2 ;;
    --fips) need_value "$@"; fips="$2"; shift 2 ;;
    --fips-proxy-image) need_value "$@"; proxy_image="$2"; shift 2 ;;
    --capabilities) need_value "$@"; caps="$2"; shift 2 ;;
    --otlp-endpoint) need_value "$@"; otlp_endpoint="$2"; shift 2 ;;
    --otlp-headers-secret) need_value "$@"; otlp_secret="$2"; shift 2 ;;
    --log-level) need_value "$@"; log_level="$2"; shift 2 ;;
    --log-retention-days) need_value "$@"; retention="$2"; shift 2 ;;
    --static-tags) need_value "$@"; static_tags="$2"; shift 2 ;;
    --tag) need_value "$@"; tags+=("$2"); shift 2 ;;
    --template) need_value "$@"; template="$2"; shift 2 ;;
    --endpoint-url|--profile) need_value "$@"; aws_args+=("$1" "$2"); shift 2 ;;
    --delete) delete=1; shift ;;
    --no-wait) wait=0; shift ;;
    *) die "unknown argument $1" ;;
  esac
done

[ -n "$region" ] || die "missing --region (or AWS_REGION), e.g. us-east-1 or us-gov-west-1"
[[ "$stack" =~ ^[A-Za-z][A-Za-z0-9-]{0,127}$ ]] || die "invalid --stack-name '$stack'"
aws_cli="${AWS_CLI:-aws}"
command -v "$aws_cli" >/dev/null 2>&1 ||
  die "the AWS CLI ($aws_cli) is not installed or not on PATH (https://aws.amazon.com/cli/, or pip install awscli)"
aws_run() { "$aws_cli" --region "$region" "${aws_args[@]+"${aws_args[@]}"}" "$@"; }

if [ "$delete" -eq 1 ]; then
  aws_run cloudformation delete-stack --stack-name "$stack"
  if [ "$wait" -eq 1 ]; then
    aws_run cloudformation wait stack-delete-complete --stack-name "$stack"
    echo "deploy-stack.sh: stack $stack deleted" >&2
  else
    echo "deploy-stack.sh: deletion of stack $stack started" >&2
  fi
  exit 0
fi

missing=""
[ -n "$cluster" ] || missing+=" --cluster"
[ -n "$agent_image" ] || missing+=" --agent-image"
[ -z "$missing" ] || die "missing:$missing"
[ -f "$template" ] || die "template not found: $template"
case "$fips" in auto|on|off) ;; *) die "invalid --fips '$fips': expected auto, on or off" ;; esac
fips_on=0
if [ "$fips" = on ] || { [ "$fips" = auto ] && [[ "$region" == us-gov-* ]]; }; then fips_on=1; fi
if [ "$fips_on" -eq 1 ] && [ -z "$proxy_image" ]; then
  die "FIPS is on (--fips $fips, region $region): missing --fips-proxy-image"
fi
case "$caps" in sys-admin|bpf) ;; *) die "invalid --capabilities '$caps': expected sys-admin or bpf" ;; esac
[[ "$retention" =~ ^[0-9]+$ ]] || die "invalid --log-retention-days '$retention'"

params=(
  "ClusterName=$cluster" "AgentImage=$agent_image" "FipsProxyImage=$proxy_image" "Fips=$fips"
  "Capabilities=$caps" "OtlpEndpoint=$otlp_endpoint" "OtlpHeadersSecretArn=$otlp_secret"
  "LogLevel=$log_level" "LogRetentionDays=$retention" "StaticTags=$static_tags"
)
tag_args=()
if [ "${#tags[@]}" -gt 0 ]; then tag_args=(--tags "${tags[@]}"); fi

status="$(aws_run cloudformation describe-stacks --stack-name "$stack" --query 'Stacks[0].StackStatus' \
  --output text 2>/dev/null || true)"
if [ "$status" = ROLLBACK_COMPLETE ]; then
  die "stack $stack is in ROLLBACK_COMPLETE (its creation failed; see its events): delete it first with --delete"
fi
aws_run cloudformation deploy --stack-name "$stack" --template-file "$template" \
  --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset \
  --parameter-overrides "${params[@]}" "${tag_args[@]+"${tag_args[@]}"}"
aws_run cloudformation describe-stacks --stack-name "$stack" \
  --query 'Stacks[0].[StackStatus, Outputs[].[OutputKey, OutputValue]]' --output text
