#!/usr/bin/env bash
# Renders a task definition template (scripts/render-task-definition.sh) and registers it with
# `aws ecs register-task-definition --cli-input-json file://...`; prints the new task definition ARN.
#
# Usage: scripts/register-task-definition.sh TEMPLATE --account-id ID --region REGION --agent-image URI
#                                            [render options] [options below]
#   (render options: see scripts/render-task-definition.sh --help)
#   --create-log-group        create the CloudWatch Logs group first if it does not exist
#   --log-retention-days N    with --create-log-group: retention to set (default 30)
#   --endpoint-url URL        passed to every aws command (e.g. a local emulator for tests)
#   --profile NAME            AWS CLI profile
#   --dry-run                 print the rendered JSON and the aws command instead of running it
# Environment: AWS_CLI (default: aws from PATH). Needs the AWS CLI (v1 or v2) and jq.
set -euo pipefail

usage() { sed -n '2,/^# Environment/p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
  echo "register-task-definition.sh: $*" >&2
  echo "(run with --help for usage)" >&2
  exit 2
}

here="$(cd "$(dirname "$0")" && pwd)"
render_args=() aws_args=() region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}" log_group="/ecs/eddy"
create_group=0 retention=30 dry_run=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --create-log-group) create_group=1; shift ;;
    --log-retention-days) [ "$#" -ge 2 ] || die "option $1 needs a value"; retention="$2"; shift 2 ;;
    --endpoint-url|--profile)
      [ "$#" -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"
      aws_args+=("$1" "$2"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --region)
      [ "$#" -ge 2 ] || die "option $1 needs a value"
      region="$2"; render_args+=("$1" "$2"); shift 2 ;;
    --log-group)
      [ "$#" -ge 2 ] || die "option $1 needs a value"
      log_group="$2"; render_args+=("$1" "$2"); shift 2 ;;
    -o|--output) die "option $1 belongs to render-task-definition.sh; use --dry-run to see the JSON" ;;
    *) render_args+=("$1"); shift ;;
  esac
done
[[ "$retention" =~ ^[0-9]+$ ]] || die "invalid --log-retention-days '$retention': expected a number of days"
[ -n "$region" ] || die "missing --region (or AWS_REGION), e.g. us-east-1 or us-gov-west-1"
[ -n "$(printf '%s' "${render_args[*]-}")" ] || die "missing TEMPLATE and render options"

aws_cli="${AWS_CLI:-aws}"
if [ "$dry_run" -eq 0 ] && ! command -v "$aws_cli" >/dev/null 2>&1; then
  die "the AWS CLI ($aws_cli) is not installed or not on PATH (https://aws.amazon.com/cli/, or pip install awscli)"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$here/render-task-definition.sh" "${render_args[@]}" --region "$region" -o "$tmp/task-definition.json"

aws_run() { "$aws_cli" --region "$region" "${aws_args[@]+"${aws_args[@]}"}" "$@"; }
if [ "$dry_run" -eq 1 ]; then
  cat "$tmp/task-definition.json"
  [ "$create_group" -eq 0 ] || echo "would run: $aws_cli --region $region ${aws_args[*]-} logs create-log-group --log-group-name $log_group" >&2
  echo "would run: $aws_cli --region $region ${aws_args[*]-} ecs register-task-definition --cli-input-json file://<the JSON above>" >&2
  exit 0
fi

if [ "$create_group" -eq 1 ]; then
  existing="$(aws_run logs describe-log-groups --log-group-name-prefix "$log_group" \
    --query "logGroups[?logGroupName=='$log_group'].logGroupName" --output text)"
  if [ "$existing" != "$log_group" ]; then
    aws_run logs create-log-group --log-group-name "$log_group"
    echo "register-task-definition.sh: created log group $log_group" >&2
  fi
  if [ "$retention" -gt 0 ]; then
    aws_run logs put-retention-policy --log-group-name "$log_group" --retention-in-days "$retention"
  fi
fi

aws_run ecs register-task-definition --cli-input-json "file://$tmp/task-definition.json" \
  --query 'taskDefinition.taskDefinitionArn' --output text
