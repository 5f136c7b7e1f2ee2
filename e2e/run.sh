#!/usr/bin/env bash
# End-to-end on a real cluster: kind, the real image, `helm install`, then what
# a user sees with kubectl. Needs docker, kind, kubectl and helm (v3.8+ or v4).
#
#   bash e2e/run.sh                 # create a kind cluster, test, delete it
#   KEEP_CLUSTER=1 bash e2e/run.sh  # leave the cluster up for a look afterwards
#   CLUSTER=dg bash e2e/run.sh      # use (or create) the kind cluster "dg"
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-distroless-guard-e2e}
IMAGE=${IMAGE:-distroless-guard:e2e}
NS=distroless-guard
APP_NS=e2e
PAUSE=registry.k8s.io/pause:3.10

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e needs $tool on the PATH" >&2; exit 2; }
done

step() { printf '\n=== %s\n' "$*"; }
pass() { printf 'ok: %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  echo "--- operator logs" >&2
  kubectl logs -n "$NS" -l app.kubernetes.io/name=distroless-guard --tail=80 --prefix >&2 || true
  exit 1
}

# expect_denied DESCRIPTION NEEDLE COMMAND...: the command fails and its stderr contains NEEDLE.
expect_denied() {
  local what=$1 needle=$2 err
  shift 2
  if err=$("$@" 2>&1 >/dev/null); then fail "$what: was admitted"; fi
  grep -qF -- "$needle" <<<"$err" || fail "$what: error lacks '$needle': $err"
  pass "$what"
  printf '    %s\n' "$(head -n 3 <<<"$err")"
}

# wait_until SECONDS DESCRIPTION COMMAND...: retries the command until it succeeds.
wait_until() {
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then pass "$what"; return 0; fi
    sleep 1
  done
  fail "$what: not within ${seconds}s"
}

cleanup() {
  if [[ "${KEEP_CLUSTER:-}" != 1 && -n "${created_cluster:-}" ]]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "kind cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --wait 180s
  created_cluster=1
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "image $IMAGE (Dockerfile: static build, distroless nonroot)"
docker build --build-arg VERSION=e2e -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "helm install"
helm install distroless-guard charts/distroless-guard -n "$NS" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never
kubectl rollout status -n "$NS" deployment/distroless-guard --timeout=180s
ca_bundle() {
  [[ -n "$(kubectl get "$1" distroless-guard -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]]
}
wait_until 60 "the operator wrote the validating caBundle" ca_bundle validatingwebhookconfiguration
wait_until 60 "the operator wrote the mutating caBundle" ca_bundle mutatingwebhookconfiguration

step "helm upgrade keeps the operator's caBundle and certificate"
secret_before=$(kubectl get secret -n "$NS" distroless-guard-webhook-tls -o jsonpath='{.data.ca\.crt}')
helm upgrade distroless-guard charts/distroless-guard -n "$NS" --reuse-values --set replicaCount=3
ca_bundle validatingwebhookconfiguration || fail "helm upgrade emptied the caBundle"
[[ "$(kubectl get secret -n "$NS" distroless-guard-webhook-tls -o jsonpath='{.data.ca\.crt}')" == "$secret_before" ]] ||
  fail "helm upgrade replaced the operator's CA"
kubectl rollout status -n "$NS" deployment/distroless-guard --timeout=180s
pass "helm upgrade keeps the caBundle and the CA"

step "a Deny policy"
kubectl create namespace "$APP_NS"
kubectl apply -f - <<'POLICY'
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata:
  name: e2e
spec:
  action: Deny
POLICY
policy_ready() { [[ "$(kubectl get dpol e2e -o jsonpath='{.status.conditions[0].status}')" == True ]]; }
wait_until 60 "the policy is in force" policy_ready

root_pod() { # NAMESPACE [kubectl run flags...]
  local ns=$1
  shift
  kubectl run root -n "$ns" --image="$PAUSE" --restart=Never \
    --overrides='{"apiVersion":"v1","spec":{"securityContext":{"runAsUser":0}}}' "$@"
}
exec_probe_deployment() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: legacy
  namespace: $APP_NS
spec:
  replicas: 1
  selector:
    matchLabels: {app: legacy}
  template:
    metadata:
      labels: {app: legacy}
    spec:
      containers:
      - name: app
        image: $PAUSE
        livenessProbe:
          exec:
            command: ["cat", "/tmp/healthy"]
YAML
}

step "what a developer sees"
expect_denied "a root pod is denied, with the rule id in kubectl's error" "[root-uid]" root_pod "$APP_NS"
expect_denied "a Deployment with an exec probe is denied at apply time" "[exec-probe]" \
  kubectl apply -f <(exec_probe_deployment)

kubectl run bare -n "$APP_NS" --image="$PAUSE" --restart=Never
kubectl wait -n "$APP_NS" --for=condition=Ready pod/bare --timeout=120s
pod_yaml=$(kubectl get pod bare -n "$APP_NS" -o yaml)
grep -q 'fsGroup: 65532' <<<"$pod_yaml" || fail "the bare pod has no fsGroup 65532"
grep -q 'runAsUser: 65532' <<<"$pod_yaml" || fail "the bare pod has no runAsUser 65532"
grep -q 'runAsNonRoot: true' <<<"$pod_yaml" || fail "the bare pod has no runAsNonRoot"
pass "a bare pod is admitted, mutated to 65532 and runs"

step "namespaces the webhook never sees"
root_pod kube-system --dry-run=server -o name >/dev/null || fail "kube-system was intercepted"
pass "a root pod in kube-system is admitted: the webhook never sees kube-system"
root_pod "$NS" --dry-run=server -o name >/dev/null || fail "the release namespace was intercepted"
pass "the release namespace is not intercepted either"

step "warn mode"
kubectl patch dpol e2e --type=merge -p '{"spec":{"action":"Warn"}}'
warned() {
  local out
  out=$(kubectl apply -f <(exec_probe_deployment) 2>&1) || return 1
  grep -q '^Warning: .*\[exec-probe\]' <<<"$out"
}
wait_until 30 "in Warn mode the Deployment is admitted and kubectl prints Warning:" warned

step "audit"
kubectl apply -f - <<'POLICY'
apiVersion: distrolessguard.dev/v1alpha1
kind: DistrolessPolicy
metadata:
  name: audit
spec:
  action: Audit
  match:
    excludeNamespaces: [kube-system, kube-public, kube-node-lease, distroless-guard]
POLICY
violating() { [[ "$(kubectl get dpol audit -o jsonpath='{.status.audit.violating}')" -ge 1 ]]; }
wait_until 60 "the Audit policy's status counts the violating Deployment" violating
kubectl get dpol audit -o jsonpath='{.status.audit}'; echo
events() { kubectl get events -n "$APP_NS" --field-selector reason=DistrolessViolation -o name | grep -q .; }
wait_until 60 "a DistrolessViolation Event names the workload" events
metrics() {
  kubectl get --raw "/api/v1/namespaces/$NS/services/distroless-guard-metrics:8080/proxy/metrics" |
    grep -q 'distroless_guard_admission_reviews_total'
}
wait_until 30 "the metrics Service serves admission counters" metrics

step "uninstall"
kubectl delete dpol --all
helm uninstall distroless-guard -n "$NS" --wait
kubectl delete crd distrolesspolicies.distrolessguard.dev
left=$(kubectl get deployment,service,serviceaccount,secret,lease,role,rolebinding,poddisruptionbudget -n "$NS" -o name |
  grep -v '^serviceaccount/default$' || true)
[[ -z "$left" ]] || fail "left behind in $NS: $left"
for kind in clusterrole clusterrolebinding validatingwebhookconfiguration mutatingwebhookconfiguration; do
  if kubectl get "$kind" distroless-guard >/dev/null 2>&1; then fail "left behind: $kind distroless-guard"; fi
done
pass "uninstall leaves nothing behind"
root_pod "$APP_NS" --dry-run=server -o name >/dev/null || fail "a root pod is still denied after uninstall"
pass "after uninstall, nothing is intercepted"

printf '\nall e2e checks passed\n'
