#!/usr/bin/env bash
# Renders an ECS task definition template from task-definitions/ into JSON ready for
# `aws ecs register-task-definition --cli-input-json file://FILE`: fills the {{PLACEHOLDERS}}
# (account, region, partition, image URIs, roles, log group) and applies the options below.
#
# Usage: scripts/render-task-definition.sh TEMPLATE --account-id ID --region REGION --agent-image URI [options]
#   TEMPLATE                  a file, or a name from task-definitions/ (eddy-daemon, eddy-daemon-govcloud,
#                             eddy-daemon-external, eddy-fargate-sidecar)
#   --account-id ID           12-digit AWS account id                                   {{ACCOUNT_ID}}
#   --region REGION           e.g. us-east-1, us-gov-west-1 (default: $AWS_REGION)       {{REGION}}
#   --partition P             aws | aws-us-gov | aws-cn (default: from the region)        {{PARTITION}}
#   --agent-image URI         eddy-agent image                                           {{AGENT_IMAGE}}
#   --fips-proxy-image URI    eddy-fips-proxy image (GovCloud template)                  {{FIPS_PROXY_IMAGE}}
#   --app-image URI           application image (Fargate sidecar example)                {{APP_IMAGE}}
#   --app-family NAME         task family of the Fargate example (default my-app-with-eddy) {{APP_FAMILY}}
#   --log-group NAME          CloudWatch Logs group (default /ecs/eddy)                   {{LOG_GROUP}}
#   --task-role NAME|ARN      task role (default eddy-task-role)                          {{TASK_ROLE}}
#   --execution-role NAME|ARN execution role (default eddy-execution-role)                {{EXECUTION_ROLE}}
#   --capabilities SET        sys-admin (default: SYS_ADMIN + NET_ADMIN + SYS_PTRACE, names every ECS agent and
#                             Docker accept) or bpf (BPF + PERFMON + NET_ADMIN + SYS_PTRACE: least privilege;
#                             needs kernel >= 5.8 and a Docker that knows CAP_BPF/CAP_PERFMON); every other
#                             capability is dropped (see the README's capability table)
#   --otlp-endpoint URL       sets EDDY_OTLP_ENDPOINT on the agent (GovCloud template: also
#                             EDDY_FIPS_OTLP_UPSTREAM on the proxy, which carries it; must be https://)
#   --otlp-headers-secret ARN Secrets Manager secret or SSM parameter ARN whose value becomes
#                             EDDY_OTLP_HEADERS (e.g. "authorization=Bearer ..."), via `secrets`, never plain env
#   --log-level LEVEL         EDDY_LOG_LEVEL (default info)
#   --record-tags LIST        static tags on every flow record: EDDY_TAGS on the agent (key:value pairs,
#                             comma-separated; keys [a-z_][a-z0-9_]*), e.g. env:prod,team:payments
#   --tag KEY=VALUE           task definition tag (repeatable; also KEY:VALUE and comma-separated lists,
#                             e.g. --tag env:prod,team:payments)
#   -o, --output FILE         write there instead of stdout
# Needs bash and jq.
set -euo pipefail

usage() { sed -n '2,/^# Needs/p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
  echo "render-task-definition.sh: $*" >&2
  echo "(run with --help for usage)" >&2
  exit 2
}

here="$(cd "$(dirname "$0")/.." && pwd)"
template="" account="" region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}" partition=""
agent_image="" proxy_image="" app_image="" app_family="my-app-with-eddy" log_group="/ecs/eddy"
task_role="eddy-task-role" exec_role="eddy-execution-role" caps="sys-admin"
otlp_endpoint="" otlp_secret="" log_level="" output="" tags=() record_tags=""

need_value() { [ "$#" -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --account-id) need_value "$@"; account="$2"; shift 2 ;;
    --region) need_value "$@"; region="$2"; shift 2 ;;
    --partition) need_value "$@"; partition="$2"; shift 2 ;;
    --agent-image) need_value "$@"; agent_image="$2"; shift 2 ;;
    --fips-proxy-image) need_value "$@"; proxy_image="$2"; shift 2 ;;
    --app-image) need_value "$@"; app_image="$2"; shift 2 ;;
    --app-family) need_value "$@"; app_family="$2"; shift 2 ;;
    --log-group) need_value "$@"; log_group="$2"; shift 2 ;;
    --task-role) need_value "$@"; task_role="$2"; shift 2 ;;
    --execution-role) need_value "$@"; exec_role="$2"; shift 2 ;;
    --capabilities) need_value "$@"; caps="$2"; shift 2 ;;
    --otlp-endpoint) need_value "$@"; otlp_endpoint="$2"; shift 2 ;;
    --otlp-headers-secret) need_value "$@"; otlp_secret="$2"; shift 2 ;;
    --log-level) need_value "$@"; log_level="$2"; shift 2 ;;
    --record-tags) need_value "$@"; record_tags="$2"; shift 2 ;;
    --tag|--tags) need_value "$@"; IFS=',' read -r -a more <<<"$2"; tags+=("${more[@]}"); shift 2 ;;
    -o|--output) need_value "$@"; output="$2"; shift 2 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$template" ] || die "more than one template given ($template, $1)"; template="$1"; shift ;;
  esac
done

command -v jq >/dev/null 2>&1 || die "jq is required (Debian/Ubuntu: apt-get install jq; Amazon Linux: dnf install jq)"
[ -n "$template" ] || die "missing TEMPLATE (one of: $(cd "$here/task-definitions" && ls ./*.json | sed 's|^\./||; s|\.json$||' | tr '\n' ' '))"
if [ ! -f "$template" ]; then
  for cand in "$here/task-definitions/$template" "$here/task-definitions/$template.json"; do
    if [ -f "$cand" ]; then template="$cand"; break; fi
  done
fi
[ -f "$template" ] || die "template not found: $template"

# Validate values before they go into JSON strings.
check() { # NAME VALUE REGEX HINT
  [[ "$2" =~ $3 ]] || die "invalid $1 '$2': $4"
}
[ -n "$account" ] || die "missing --account-id (12-digit AWS account id)"
check --account-id "$account" '^[0-9]{12}$' "expected 12 digits"
[ -n "$region" ] || die "missing --region (or AWS_REGION), e.g. us-east-1 or us-gov-west-1"
check --region "$region" '^[a-z]{2}(-[a-z]+)+-[0-9]+$' "expected a region name such as us-east-1"
if [ -z "$partition" ]; then
  case "$region" in
    us-gov-*) partition=aws-us-gov ;;
    cn-*) partition=aws-cn ;;
    *) partition=aws ;;
  esac
fi
check --partition "$partition" '^aws(-[a-z-]+)?$' "expected aws, aws-us-gov or aws-cn"
image_re='^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$'
[ -z "$agent_image" ] || check --agent-image "$agent_image" "$image_re" "expected an image reference"
[ -z "$proxy_image" ] || check --fips-proxy-image "$proxy_image" "$image_re" "expected an image reference"
[ -z "$app_image" ] || check --app-image "$app_image" "$image_re" "expected an image reference"
check --app-family "$app_family" '^[A-Za-z0-9_-]{1,255}$' "letters, digits, _ and - only"
check --log-group "$log_group" '^[A-Za-z0-9_./#-]{1,512}$' "letters, digits and _ . / # - only"
role_re='^(arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+|[A-Za-z0-9+=,.@_-]{1,64})$'
check --task-role "$task_role" "$role_re" "expected a role name or role ARN"
check --execution-role "$exec_role" "$role_re" "expected a role name or role ARN"
case "$caps" in sys-admin|bpf) ;; *) die "invalid --capabilities '$caps': expected sys-admin or bpf" ;; esac
if [ -n "$otlp_secret" ]; then
  check --otlp-headers-secret "$otlp_secret" '^arn:aws[a-z-]*:(secretsmanager|ssm):[a-z0-9-]+:[0-9]{12}:.+$' \
    "expected a Secrets Manager secret ARN or an SSM parameter ARN"
fi
[ -z "$record_tags" ] || check --record-tags "$record_tags" \
  '^[a-z_][a-z0-9_]*:[^,]+(,[a-z_][a-z0-9_]*:[^,]+)*$' "expected key:value pairs, e.g. env:prod,team:payments"
if [ -n "$otlp_endpoint" ]; then
  check --otlp-endpoint "$otlp_endpoint" '^https?://[^/?#@ ]+(/[^ ]*)?$' "expected an http(s):// URL"
  if grep -q '"eddy-fips-proxy"' "$template" && [[ "$otlp_endpoint" != https://* ]]; then
    die "--otlp-endpoint '$otlp_endpoint': the FIPS proxy carries OTLP over TLS only; give the intake's https:// URL"
  fi
fi
[ -z "$log_level" ] || check --log-level "$log_level" '^[A-Za-z0-9_=,:.-]+$' "expected e.g. info or debug"

text="$(cat "$template")"
subst() { # PLACEHOLDER VALUE
  text="${text//"{{$1}}"/"$2"}"
}
subst ACCOUNT_ID "$account"
subst REGION "$region"
subst PARTITION "$partition"
subst LOG_GROUP "$log_group"
subst APP_FAMILY "$app_family"
[[ "$task_role" == arn:* ]] || subst TASK_ROLE "$task_role"
[[ "$exec_role" == arn:* ]] || subst EXECUTION_ROLE "$exec_role"
[ -z "$agent_image" ] || subst AGENT_IMAGE "$agent_image"
[ -z "$proxy_image" ] || subst FIPS_PROXY_IMAGE "$proxy_image"
[ -z "$app_image" ] || subst APP_IMAGE "$app_image"

# Placeholders left over: say which option fills each.
left="$(grep -o '{{[A-Z_]*}}' <<<"$text" | sort -u | tr -d '{}' || true)"
if [ -n "$left" ]; then
  missing=""
  for p in $left; do
    case "$p" in
      AGENT_IMAGE) missing+=" --agent-image" ;;
      FIPS_PROXY_IMAGE) missing+=" --fips-proxy-image" ;;
      APP_IMAGE) missing+=" --app-image" ;;
      TASK_ROLE) [[ "$task_role" == arn:* ]] || missing+=" {{TASK_ROLE}}" ;;
      EXECUTION_ROLE) [[ "$exec_role" == arn:* ]] || missing+=" {{EXECUTION_ROLE}}" ;;
      *) missing+=" {{$p}} (unknown placeholder)" ;;
    esac
  done
  [ -z "$missing" ] || die "$(basename "$template") needs:$missing"
fi

tags_json="$(for t in "${tags[@]+"${tags[@]}"}"; do
  [ -n "$t" ] || continue
  if [[ "$t" == *=* ]]; then k="${t%%=*}" v="${t#*=}"; elif [[ "$t" == *:* ]]; then k="${t%%:*}" v="${t#*:}"; else
    die "invalid --tag '$t': expected KEY=VALUE or KEY:VALUE"
  fi
  [ -n "$k" ] || die "invalid --tag '$t': empty key"
  jq -cn --arg k "$k" --arg v "$v" '{key: $k, value: $v}'
done | jq -cs '.')"

rendered="$(jq \
  --arg task_role "$task_role" --arg exec_role "$exec_role" --arg caps "$caps" \
  --arg otlp_endpoint "$otlp_endpoint" --arg otlp_secret "$otlp_secret" --arg log_level "$log_level" \
  --arg record_tags "$record_tags" \
  --argjson tags "$tags_json" '
  def agent(f): .containerDefinitions |= map(if .name == "eddy-agent" then f else . end);
  def proxy(f): .containerDefinitions |= map(if .name == "eddy-fips-proxy" then f else . end);
  def setenv($n; $v): .environment = ([(.environment // [])[] | select(.name != $n)] + [{name: $n, value: $v}]);
  (if ($task_role | startswith("arn:")) then .taskRoleArn = $task_role else . end)
  | (if ($exec_role | startswith("arn:")) then .executionRoleArn = $exec_role else . end)
  | (if $caps == "bpf" then agent(if .linuxParameters.capabilities.add then
        .linuxParameters.capabilities.add |= ((map(select(. != "SYS_ADMIN")) + ["BPF", "PERFMON"]) | unique)
      else . end) else . end)
  | (if $otlp_endpoint != "" then agent(setenv("EDDY_OTLP_ENDPOINT"; $otlp_endpoint))
      | proxy(setenv("EDDY_FIPS_OTLP_UPSTREAM"; $otlp_endpoint)) else . end)
  | (if $log_level != "" then agent(setenv("EDDY_LOG_LEVEL"; $log_level)) else . end)
  | (if $record_tags != "" then agent(setenv("EDDY_TAGS"; $record_tags)) else . end)
  | (if $otlp_secret != "" then agent(.secrets = ([(.secrets // [])[] | select(.name != "EDDY_OTLP_HEADERS")]
        + [{name: "EDDY_OTLP_HEADERS", valueFrom: $otlp_secret}])) else . end)
  | (if ($tags | length) > 0 then .tags = $tags else . end)
  ' <<<"$text")" || die "$(basename "$template") is not valid JSON after substitution"

if [ -n "$output" ]; then
  printf '%s\n' "$rendered" >"$output"
else
  printf '%s\n' "$rendered"
fi
