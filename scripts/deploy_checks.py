#!/usr/bin/env python3
"""Checks of deploy/ that no off-the-shelf linter makes, called by scripts/check-deploy.sh.

  manifests RENDERED.yaml OVERLAY     the hardening, probes, grace period and shape of one
                                      rendered overlay (`kubectl kustomize` output)
  configs RENDERED.yaml OUTDIR        write each ConfigMap's keyward.yaml to OUTDIR
  dashboard FILE                      the Grafana dashboard's structure (Grafana's schema keys)
  queries RULES_OUT ALERTS DASHBOARD  every PromQL expression of the dashboard and the alerts,
                                      as a rules file for `promtool check rules` to parse
  metric-names PAGE ALERTS DASHBOARD  every keyward_/process_ metric they use is on PAGE
                                      (a live /metrics page)
  prometheus-static CONFIG OUT PORT   CONFIG with its kubernetes_sd_configs replaced by static
                                      targets carrying the labels the pod role would give a
                                      keyward pod (ops port PORT on 127.0.0.1), the app
                                      container and keyward's proxy port
  prometheus-targets TARGETS.json POD the scrape job kept exactly one target, that pod's ops port
Each exits 1 with one line per problem.
"""

import json
import re
import sys

import yaml

problems = []


def problem(message):
    problems.append(message)


def finish(what):
    if problems:
        for p in problems:
            print(f"{what}: {p}", file=sys.stderr)
        sys.exit(1)
    print(f"{what}: ok")


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# ---------------------------------------------------------------------------------- manifests

def seconds(text):
    """A keyward duration: whole seconds or with a unit."""
    text = str(text)
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def quantity(text):
    """A Kubernetes quantity in bytes ("64Mi", "1Gi", "512M", "1000")."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    factor = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
              "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(m.group(1)) * factor


def prestop_seconds(container):
    command = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
    if command and command[0] == "sleep":
        return int(command[1])
    sleep = (((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
    return int(sleep or 0)


def check_manifests(path, overlay):
    docs = documents(path)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        problem(f"expected one Deployment, found {len(deployments)}")
        return
    deployment = deployments[0]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    pod_sc = pod.get("securityContext") or {}
    init = pod.get("initContainers") or []
    containers = pod.get("containers") or []

    for key, want in [("runAsNonRoot", True), ("runAsUser", 10001), ("runAsGroup", 10001),
                      ("fsGroup", 10001)]:
        if pod_sc.get(key) != want:
            problem(f"pod securityContext.{key} is {pod_sc.get(key)!r}, want {want!r}")
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problem("pod securityContext.seccompProfile.type is not RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        problem("the pod mounts a service account token")

    for c in init + containers:
        name = c["name"]
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(f"{name}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(f"{name}: allowPrivilegeEscalation is not false")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            problem(f"{name}: capabilities.drop is not [ALL]")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) in (None, 0):
            problem(f"{name}: may run as root")
        resources = c.get("resources") or {}
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(part) or {}):
                    problem(f"{name}: no resources.{part}.{resource}")
        image = c.get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest":
            problem(f"{name}: image {image!r} is not pinned by a tag")
        if prestop_seconds(c) <= 0:
            problem(f"{name}: no preStop sleep (the endpoints would not drain)")

    keyward = [c for c in init + containers if c["name"] == "keyward"]
    if len(keyward) != 1:
        problem("expected one container named keyward")
        return
    keyward = keyward[0]
    # authz-*: keyward as an edge's external-authorization service (its own pod, like edge).
    authz = overlay.startswith("authz")
    sidecar = overlay != "edge" and not authz
    if sidecar:
        if keyward not in init or keyward.get("restartPolicy") != "Always":
            problem("keyward is not a native sidecar (initContainer with restartPolicy: Always)")
        if not any(c["name"] != "keyward" for c in containers):
            problem("the sidecar pod has no application container")
    else:
        if keyward not in containers or "restartPolicy" in keyward or init:
            problem("at the edge keyward must be the pod's plain container")
    if not re.fullmatch(r"ghcr\.io/keyward/keyward:\d+\.\d+\.\d+", keyward["image"]):
        problem(f"keyward image {keyward['image']!r} is not ghcr.io/keyward/keyward:X.Y.Z")

    ports = {p["name"]: p["containerPort"] for p in keyward.get("ports", [])}
    if "ops" not in ports:
        problem("keyward has no port named ops")
    for probe, path in [("startupProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/healthz")]:
        get = (keyward.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or get.get("port") != "ops":
            problem(f"keyward {probe} is not GET {path} on the ops port")

    annotations = spec["template"]["metadata"].get("annotations") or {}
    if annotations.get("prometheus.io/scrape") != "true":
        problem("the pod is not annotated prometheus.io/scrape: \"true\"")
    if str(ports.get("ops")) != annotations.get("prometheus.io/port"):
        problem(f"prometheus.io/port {annotations.get('prometheus.io/port')!r} is not the ops port {ports.get('ops')}")

    # The configuration keyward reads, from the ConfigMap mounted where KEYWARD_CONFIG points.
    env = {e["name"]: e for e in keyward.get("env", [])}
    config_path = (env.get("KEYWARD_CONFIG") or {}).get("value", "")
    mounts = {m["mountPath"]: m["name"] for m in keyward.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    config_dir, _, config_file = config_path.rpartition("/")
    volume = volumes.get(mounts.get(config_dir, ""), {})
    configmap_name = (volume.get("configMap") or {}).get("name")
    configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    if configmap_name not in configmaps:
        problem(f"KEYWARD_CONFIG {config_path!r} is not on a ConfigMap of this overlay")
        return
    config = yaml.safe_load(configmaps[configmap_name]["data"][config_file])

    def writable_volume(path):
        """The volume holding `path` when it is writable (emptyDir or PVC), else None."""
        best = None
        for mount in keyward.get("volumeMounts", []):
            prefix = mount["mountPath"].rstrip("/") + "/"
            if path.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
                best = (prefix, mount)
        if best is None or best[1].get("readOnly"):
            return None
        v = volumes[best[1]["name"]]
        return v if ("emptyDir" in v or "persistentVolumeClaim" in v) else None

    server = config.get("server") or {}
    pid_file = str(server.get("pid_file", "keyward.pid"))
    if not pid_file.startswith("/") or writable_volume(pid_file) is None:
        problem(f"server.pid_file {pid_file!r} is not on a writable volume (the root filesystem is read-only)")
    store_url = (config.get("store") or {}).get("url", "")
    if store_url.startswith("sqlite://"):
        db = store_url[len("sqlite://"):]
        v = writable_volume(db) if db.startswith("/") else None
        if v is None or "persistentVolumeClaim" not in v:
            problem(f"the SQLite store {db!r} is not on a PersistentVolumeClaim")
        if spec.get("replicas") != 1 or (spec.get("strategy") or {}).get("type") != "Recreate":
            problem("an SQLite store needs replicas: 1 and strategy Recreate")
    else:
        if any("persistentVolumeClaim" in v for v in volumes.values()):
            problem("a fleet pod mounts a PersistentVolumeClaim")
        if (spec.get("replicas") or 1) < 3:
            problem("a fleet needs at least 3 replicas")
        if not by_kind.get("PodDisruptionBudget"):
            problem("a fleet needs a PodDisruptionBudget")
        redis = config.get("redis") or {}
        for var in [(config.get("store") or {}).get("url_env"),
                    redis.get("url_env") or (config.get("replay") or {}).get("redis_url_env")]:
            if not var or "secretKeyRef" not in ((env.get(var) or {}).get("valueFrom") or {}):
                problem(f"{var!r} does not come from a Secret")
        # TLS to Redis, verified against a CA mounted read-only into keyward's container.
        for key in ("ca", "cert", "key"):
            path = str((redis.get("tls") or {}).get(key, ""))
            if path and not any(path.startswith(m.rstrip("/") + "/") and m_ro
                                for m, m_ro in ((m["mountPath"], m.get("readOnly", False))
                                                for m in keyward.get("volumeMounts", []))):
                problem(f"redis.tls.{key} {path!r} is not on a read-only mounted volume")
        if redis and not redis.get("tls"):
            problem("the fleet's Redis is reached without TLS (redis.tls)")

    # Signed bodies spool to signatures.spool_dir (default /tmp): it must be writable and
    # hold signatures.bodies_in_flight, which must also fit in the memory limit.
    signatures = config.get("signatures") or {}
    in_flight = int(signatures.get("bodies_in_flight", 256 * 1024 * 1024))
    spool = str(signatures.get("spool_dir", "/tmp"))
    spool_volume = writable_volume(spool.rstrip("/") + "/spool-file")
    size_limit = quantity(((spool_volume or {}).get("emptyDir") or {}).get("sizeLimit", "0"))
    if spool_volume is None or ("emptyDir" in spool_volume and size_limit < in_flight):
        problem(f"signatures.spool_dir {spool!r} is not a writable volume holding "
                f"signatures.bodies_in_flight ({in_flight} bytes)")
    memory_limit = quantity(((keyward.get("resources") or {}).get("limits") or {}).get("memory", "0"))
    if in_flight >= memory_limit / 2:
        problem(f"signatures.bodies_in_flight ({in_flight} bytes) is not well within keyward's memory limit")

    # SIGTERM: every preStop sleep runs before keyward's grace period and shutdown timeout.
    grace = seconds(server.get("grace_period", "5s")) + seconds(server.get("shutdown_timeout", "5s"))
    needed = sum(prestop_seconds(c) for c in init + containers) + grace
    termination = pod.get("terminationGracePeriodSeconds", 30)
    if termination <= needed:
        problem(f"terminationGracePeriodSeconds {termination} <= preStop sleeps + server.grace_period + "
                f"server.shutdown_timeout = {needed:g}")

    services = by_kind.get("Service", [])
    policies = by_kind.get("NetworkPolicy", [])
    if not services or not policies or not by_kind.get("ServiceAccount"):
        problem("missing the Service, NetworkPolicy or ServiceAccount")
        return
    proxy_port = ports.get("authz") if authz else ports.get("https", ports.get("http"))
    open_to_all, opened = set(), set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                opened.add(p.get("port"))
                if not rule.get("from"):
                    open_to_all.add(p.get("port"))
    if authz:
        # Only the edge asks: the authorization port is opened to selected pods only.
        if proxy_port is None or proxy_port not in opened or proxy_port in open_to_all:
            problem(f"the NetworkPolicy must open the authz port {proxy_port}, to the edge only")
        listen = config.get("listen") or {}
        if str(listen.get("authz", "")).rpartition(":")[2] != str(proxy_port):
            problem(f"listen.authz {listen.get('authz')!r} is not the authz port {proxy_port}")
        if not (config.get("external_authz") or {}).get("trusted_callers"):
            problem("external_authz.trusted_callers is not set")
    elif proxy_port not in open_to_all:
        problem(f"the NetworkPolicy does not open the proxy port {proxy_port}")
    if ports.get("ops") not in opened or ports.get("ops") in open_to_all or "ops" in open_to_all:
        problem("the NetworkPolicy must open the ops port, to selected clients only")
    for service in services:
        for p in service["spec"]["ports"]:
            if p.get("targetPort") != proxy_port:
                problem(f"Service port {p.get('name')} targets {p.get('targetPort')!r}, not keyward's proxy port {proxy_port}")
    if overlay == "edge":
        if services[0]["spec"].get("type") != "LoadBalancer":
            problem("the edge Service is not of type LoadBalancer")
        tls = (config.get("listen") or {}).get("tls") or {}
        secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
        for key in ("cert", "key"):
            directory = str(tls.get(key, "")).rpartition("/")[0]
            v = volumes.get(mounts.get(directory, ""), {})
            name = (v.get("secret") or {}).get("secretName")
            if secrets.get(name, {}).get("type") != "kubernetes.io/tls":
                problem(f"listen.tls.{key} is not from a kubernetes.io/tls Secret")
    finish(f"manifests {overlay}")


def write_configs(path, outdir):
    written = 0
    for d in documents(path):
        if d["kind"] == "ConfigMap" and "keyward.yaml" in d.get("data", {}):
            with open(f"{outdir}/{d['metadata']['name']}.yaml", "w") as f:
                f.write(d["data"]["keyward.yaml"])
            written += 1
    if written != 1:
        problem(f"expected one ConfigMap with keyward.yaml, found {written}")
    finish(f"configs {path}")


# ---------------------------------------------------------------------------------- dashboard

PANEL_TYPES = {"row", "stat", "timeseries", "state-timeline", "gauge", "table", "bargauge", "text"}


def dashboard_queries(dash):
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def check_dashboard(path):
    with open(path) as f:
        dash = json.load(f)
    for key, kind in [("title", str), ("uid", str), ("schemaVersion", int), ("panels", list),
                      ("templating", dict), ("time", dict)]:
        if not isinstance(dash.get(key), kind):
            problem(f"top-level {key!r} missing or not {kind.__name__}")
    if problems:
        finish("dashboard")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"]):
        problem(f"uid {dash['uid']!r}: at most 40 letters, digits, - and _")
    variables = {v["name"] for v in dash["templating"].get("list", [])}
    if "datasource" not in variables:
        problem("no datasource variable: the dashboard would not import into another Grafana")
    ids, cells = set(), {}
    for panel in dash["panels"]:
        title = panel.get("title", "?")
        for key in ("id", "type", "title", "gridPos"):
            if key not in panel:
                problem(f"panel {title!r}: no {key}")
        if panel.get("id") in ids:
            problem(f"panel {title!r}: duplicate id {panel.get('id')}")
        ids.add(panel.get("id"))
        if panel.get("type") not in PANEL_TYPES:
            problem(f"panel {title!r}: unknown type {panel.get('type')!r}")
        pos = panel.get("gridPos") or {}
        if not all(isinstance(pos.get(k), int) for k in "xywh"):
            problem(f"panel {title!r}: gridPos needs integer x, y, w, h")
            continue
        if pos["x"] < 0 or pos["x"] + pos["w"] > 24 or pos["w"] < 1 or pos["h"] < 1:
            problem(f"panel {title!r}: gridPos outside the 24-column grid")
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in cells:
                    problem(f"panel {title!r} overlaps {cells[(x, y)]!r}")
                    break
                cells[(x, y)] = title
            else:
                continue
            break
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets")
        if not targets:
            problem(f"panel {title!r}: no targets")
            continue
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problem(f"panel {title!r}: refIds missing or repeated")
        for t in targets:
            if not t.get("expr"):
                problem(f"panel {title!r}: a target without expr")
        ds = panel.get("datasource") or {}
        if ds.get("uid") != "${datasource}":
            problem(f"panel {title!r}: datasource is not the ${{datasource}} variable")
        for var in re.findall(r"\$(\w+)", json.dumps(targets)):
            if not var.startswith("__") and var not in variables:
                problem(f"panel {title!r}: unknown variable ${var}")
    finish("dashboard")


def alert_queries(path):
    with open(path) as f:
        rules = yaml.safe_load(f)
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule.get("record"), rule["expr"]


def write_query_rules(out, alerts, dashboard):
    """The dashboard's expressions as recording rules, Grafana's variables given values."""
    with open(dashboard) as f:
        dash = json.load(f)
    rules = []
    for i, (title, expr) in enumerate(dashboard_queries(dash)):
        expr = (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
                .replace("$namespace", ".*").replace("$pod", ".*"))
        rules.append({"record": f"dashboard:query_{i}", "expr": expr, "labels": {"panel": title}})
    for v in dash["templating"]["list"]:
        query = (v.get("query") or {}).get("query", "") if isinstance(v.get("query"), dict) else ""
        m = re.fullmatch(r"label_values\((.*), \w+\)", query)
        if m:
            rules.append({"record": f"dashboard:variable_{v['name']}",
                          "expr": m.group(1).replace("$namespace", ".*")})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    print(f"queries: {len(rules)} dashboard expressions written to {out}")


# ------------------------------------------------------------------------------- metric names

SUFFIXES = ("_bucket", "_sum", "_count")


def used_metrics(expr):
    names = set(re.findall(r"\b((?:keyward|process)_[a-z0-9_]+)", expr))
    return {n for n in names}


# Labels the scrape job adds (prometheus.yaml), and the histogram bucket label.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "controller", "le"}


def check_metric_names(page, alerts, dashboard):
    """Every metric used is on the page, and so is every label it is filtered or grouped by
    (a renamed label would leave a selector matching nothing, or everything)."""
    on_page, labels = set(), {}
    with open(page) as f:
        for line in f:
            if line.startswith("# TYPE "):
                on_page.add(line.split()[2])
            elif line.strip() and not line.startswith("#"):
                m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?", line)
                labels.setdefault(m.group(1), set()).update(re.findall(r"(\w+)=\"", m.group(2) or ""))
    with open(dashboard) as f:
        dash = json.load(f)
    used = {}
    for where, expr in list(alert_queries(alerts)) + list(dashboard_queries(dash)):
        names = used_metrics(expr)
        for name in names:
            used.setdefault(name, where)
        for name, matchers in re.findall(r"\b((?:keyward|process)_\w+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                if name in labels and label not in TARGET_LABELS and label not in labels[name]:
                    problem(f"{where!r}: {name} has no label {label!r} on the live page")
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in (l.strip() for l in group.split(",")):
                present = [n for n in names if n in labels]
                if present and label and label not in TARGET_LABELS and not any(
                        label in labels[n] for n in present):
                    problem(f"{where!r}: groups by {label!r}, which none of {sorted(names)} has on the live page")
    for name, where in sorted(used.items()):
        base = name
        for suffix in SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in on_page:
                base = name[: -len(suffix)]
        if base not in on_page:
            problem(f"{name} (used by {where!r}) is not on the live /metrics page")
    finish(f"metric names and labels ({len(used)} metrics used)")


# --------------------------------------------------------------------------------- prometheus

def prometheus_static(config_path, out, ops_port):
    with open(config_path) as f:
        config = yaml.safe_load(f)
    base = {
        "__meta_kubernetes_namespace": "shop",
        "__meta_kubernetes_pod_name": "keyward-7d9f-abcde",
        "__meta_kubernetes_pod_ip": "127.0.0.1",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_controller_name": "keyward-7d9f",
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_port": str(ops_port),
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
    }
    # What the pod role yields for the sidecar pod: one target per container port, and one
    # for a container without ports. Only keyward's ops port may survive the relabelling.
    targets = [
        (f"127.0.0.1:{ops_port}", {"__meta_kubernetes_pod_container_name": "keyward",
                                   "__meta_kubernetes_pod_container_port_name": "ops",
                                   "__meta_kubernetes_pod_container_init": "true"}),
        ("127.0.0.1:8080", {"__meta_kubernetes_pod_container_name": "keyward",
                            "__meta_kubernetes_pod_container_port_name": "http",
                            "__meta_kubernetes_pod_container_init": "true"}),
        ("127.0.0.1", {"__meta_kubernetes_pod_container_name": "app",
                       "__meta_kubernetes_pod_container_init": "false"}),
    ]
    found = False
    for job in config["scrape_configs"]:
        sd = job.pop("kubernetes_sd_configs", None)
        if sd is None:
            continue
        found = True
        if [c.get("role") for c in sd] != ["pod"]:
            problem(f"job {job['job_name']}: kubernetes_sd_configs must be one role: pod")
        job["static_configs"] = [{"targets": [t], "labels": dict(base, **labels)} for t, labels in targets]
        job["scrape_interval"] = "1s"
    if not found:
        problem("no job with kubernetes_sd_configs")
    config["global"]["evaluation_interval"] = "1s"
    with open(out, "w") as f:
        yaml.safe_dump(config, f)
    finish("prometheus-static")


def prometheus_targets(path, ops_port):
    with open(path) as f:
        data = json.load(f)["data"]
    active = [t for t in data["activeTargets"] if t["labels"].get("job") == "keyward"]
    if len(active) != 1:
        problem(f"expected one active keyward target, found {len(active)}: {[t['scrapeUrl'] for t in active]}")
    else:
        t = active[0]
        want = f"http://127.0.0.1:{ops_port}/metrics"
        if t["scrapeUrl"] != want:
            problem(f"scrape URL {t['scrapeUrl']}, want {want}")
        if t["health"] != "up":
            problem(f"target health {t['health']}: {t.get('lastError')}")
        for label, value in [("namespace", "shop"), ("pod", "keyward-7d9f-abcde")]:
            if t["labels"].get(label) != value:
                problem(f"target label {label}={t['labels'].get(label)!r}, want {value!r}")
    finish("prometheus-targets")


def main():
    command, args = sys.argv[1], sys.argv[2:]
    {
        "manifests": check_manifests,
        "configs": write_configs,
        "dashboard": check_dashboard,
        "queries": write_query_rules,
        "metric-names": check_metric_names,
        "prometheus-static": prometheus_static,
        "prometheus-targets": prometheus_targets,
    }[command](*args)


if __name__ == "__main__":
    main()
