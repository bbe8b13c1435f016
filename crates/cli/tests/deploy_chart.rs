//! The Helm chart in `deploy/chart`: linted and rendered by a real helm, every rendered object
//! validated by the lab's kube-apiserver (server-side dry run, whose JSON answer is what the assertions
//! read), and its RBAC asked of the apiserver's own authorizer.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use serde_json::{Value, json};
use test_support::{Lab, lab_script};

const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/chart/harvester-vm-import-controller"
);
/// Harvester's Addon is named `vm-import-controller` and installs the chart as a release of that name.
const RELEASE: &str = "vm-import-controller";
const NAMESPACE: &str = "harvester-system";
/// What Harvester's Addon sets.
const ADDON: &[&str] = &[
    "fullnameOverride=harvester-vm-import-controller",
    "image.tag=v9.9.9",
];

/// One RBAC rule as the chart must grant it: API group, resources, resource names (empty: any), verbs.
type Rule = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

const READ: &[&str] = &["get", "list", "watch"];
const MIGRATION_KINDS: &[&str] = &[
    "vmwaresources",
    "vmwaresources/status",
    "vmwaresources/finalizers",
    "openstacksources",
    "openstacksources/status",
    "openstacksources/finalizers",
    "ovasources",
    "ovasources/status",
    "ovasources/finalizers",
    "virtualmachineimports",
    "virtualmachineimports/status",
    "virtualmachineimports/finalizers",
];
const OWN_CRDS: &[&str] = &[
    "vmwaresources.migration.harvesterhci.io",
    "openstacksources.migration.harvesterhci.io",
    "ovasources.migration.harvesterhci.io",
    "virtualmachineimports.migration.harvesterhci.io",
];

const CLUSTER_RULES: &[Rule] = &[
    (
        "migration.harvesterhci.io",
        MIGRATION_KINDS,
        &[],
        &["get", "list", "watch", "update", "patch"],
    ),
    (
        "harvesterhci.io",
        &["virtualmachineimages"],
        &[],
        &["get", "list", "watch", "create", "update", "patch", "delete"],
    ),
    (
        "kubevirt.io",
        &["virtualmachines"],
        &[],
        &["get", "list", "watch", "create"],
    ),
    ("", &["secrets"], &[], READ),
    (
        "",
        &["persistentvolumeclaims"],
        &[],
        &["get", "list", "watch", "create"],
    ),
    ("storage.k8s.io", &["storageclasses"], &[], READ),
    ("k8s.cni.cncf.io", &["network-attachment-definitions"], &[], READ),
    ("", &["events"], &[], &["create", "patch"]),
    ("events.k8s.io", &["events"], &[], &["create", "patch"]),
    (
        "apiextensions.k8s.io",
        &["customresourcedefinitions"],
        OWN_CRDS,
        &["get", "update", "patch"],
    ),
    (
        "apiextensions.k8s.io",
        &["customresourcedefinitions"],
        &[],
        &["list", "watch", "create"],
    ),
];

const LEASE_RULES: &[Rule] = &[
    (
        "coordination.k8s.io",
        &["leases"],
        &["vm-import-controller"],
        &["get", "update"],
    ),
    ("coordination.k8s.io", &["leases"], &[], &["create"]),
];

/// (group, resource, name, verb), one per permission, so rule sets compare however they are grouped.
type Grant = (String, String, String, String);

/// `appVersion` from the chart's Chart.yaml.
fn chart_app_version() -> String {
    let text = std::fs::read_to_string(format!("{CHART}/Chart.yaml")).expect("Chart.yaml");
    text.lines()
        .find_map(|line| line.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("appVersion in Chart.yaml")
}

fn expand(rules: &[Rule]) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for (group, resources, names, verbs) in rules {
        let names: Vec<&str> = if names.is_empty() {
            vec![""]
        } else {
            names.to_vec()
        };
        for resource in *resources {
            for name in &names {
                for verb in *verbs {
                    grants.insert((
                        group.to_string(),
                        resource.to_string(),
                        name.to_string(),
                        verb.to_string(),
                    ));
                }
            }
        }
    }
    grants
}

/// The grants of a ClusterRole or Role as the apiserver stored it.
fn grants_of(role: &Value) -> BTreeSet<Grant> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().expect("string").to_owned()).collect())
            .unwrap_or_default()
    };
    let mut grants = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let mut names = strings(&rule["resourceNames"]);
        if names.is_empty() {
            names.push(String::new());
        }
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for name in &names {
                    for verb in strings(&rule["verbs"]) {
                        grants.insert((group.clone(), resource.clone(), name.clone(), verb));
                    }
                }
            }
        }
    }
    grants
}

/// Path of a lab binary in the version-keyed cache, named by `lab/lib.sh` itself.
fn lab_binary(name: &str) -> PathBuf {
    let out = Command::new("bash")
        .args(["-c", r#". "$0" && lab_bin "$1""#])
        .arg(lab_script("lib.sh"))
        .arg(name)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "lab_bin {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim());
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// helm, built by `lab/build helm` if the cache lacks it (a warm build does nothing).
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new(lab_script("build"))
            .arg("helm")
            .output()
            .expect("run lab/build");
        assert!(
            out.status.success(),
            "lab/build helm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab_binary("helm")
    })
}

/// kubectl against the lab's apiserver (`lab/up` built it), with `harvester-system` present.
fn kubectl() -> Command {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    let lab = Lab::get();
    let path = KUBECTL.get_or_init(|| {
        let path = lab_binary("kubectl");
        let out = Command::new(&path)
            .arg("--kubeconfig")
            .arg(&lab.kubeconfig)
            .args(["create", "namespace", NAMESPACE])
            .output()
            .expect("run kubectl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("AlreadyExists"),
            "create namespace: {stderr}"
        );
        path
    });
    let mut cmd = Command::new(path);
    cmd.arg("--kubeconfig").arg(&lab.kubeconfig);
    cmd
}

/// Runs `cmd` with `stdin` as its standard input.
fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn helm_template(release: &str, namespace: &str, set: &[&str], extra: &[&str]) -> Output {
    let mut cmd = Command::new(helm());
    cmd.args(["template", release, CHART, "--namespace", namespace]);
    for value in set {
        cmd.args(["--set", *value]);
    }
    cmd.args(extra).output().expect("run helm")
}

/// The chart rendered as the Addon's release in `harvester-system` with `set` values, every object
/// applied with a server-side dry run and returned as the apiserver would store it.
fn render(set: &[&str]) -> Vec<Value> {
    let manifest = succeeded("helm template", helm_template(RELEASE, NAMESPACE, set, &[]));
    let documents = manifest.matches("\n# Source: ").count();
    let applied = succeeded(
        "kubectl apply --dry-run=server",
        run(
            kubectl().args(["apply", "--dry-run=server", "-o", "json", "-f", "-"]),
            &manifest,
        ),
    );
    let objects = json_objects(&applied);
    assert_eq!(
        objects.len(),
        documents,
        "every rendered document reaches the apiserver:\n{manifest}"
    );
    objects
}

/// Objects printed by kubectl: one after another, or wrapped in a List.
fn json_objects(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|v| v.expect("kubectl prints JSON"))
        .flat_map(|v| {
            if v["kind"] == "List" {
                v["items"].as_array().cloned().unwrap_or_default()
            } else {
                vec![v]
            }
        })
        .collect()
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().expect("kind").to_owned())
        .collect()
}

fn only<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = objects.iter().filter(|o| o["kind"] == kind);
    let object = of_kind.next().unwrap_or_else(|| panic!("no {kind} rendered"));
    assert!(of_kind.next().is_none(), "more than one {kind} rendered");
    object
}

fn container(objects: &[Value]) -> &Value {
    let containers = &only(objects, "Deployment")["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().map(Vec::len), Some(1), "{containers}");
    &containers[0]
}

fn args(objects: &[Value]) -> Vec<&str> {
    container(objects)["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg"))
        .collect()
}

/// The container's env as `name=value`, or `name<-fieldPath` for the downward API.
fn env(objects: &[Value]) -> BTreeSet<String> {
    container(objects)["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some(path) => format!("{}<-{path}", e["name"].as_str().expect("name")),
            None => format!(
                "{}={}",
                e["name"].as_str().expect("name"),
                e["value"].as_str().expect("value")
            ),
        })
        .collect()
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn chart_lints_clean_with_every_value_set() {
    let sets: [&[&str]; 4] = [
        &[],
        ADDON,
        &[
            "pvcClaim.enabled=true",
            "pvcClaim.size=50Gi",
            "pvcClaim.storageClassName=harvester-longhorn",
        ],
        &[
            "leaderElection.enabled=false",
            "metrics.service=false",
            "debug=true",
        ],
    ];
    for set in sets {
        let mut cmd = Command::new(helm());
        cmd.args(["lint", "--strict", CHART, "--namespace", NAMESPACE]);
        for value in set {
            cmd.args(["--set", *value]);
        }
        let out = succeeded("helm lint", cmd.output().expect("run helm"));
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{set:?}: {out}"
        );
    }
}

#[test]
fn defaults_keep_upstreams_names_ports_and_scratch_mount() {
    let objects = render(&[]);
    assert_eq!(
        kinds(&objects),
        set_of(&[
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ])
    );

    // Without fullnameOverride the release prefixes the chart name: the other name Harvester's
    // storage-network controller has looked the Deployment up by.
    let deployment = only(&objects, "Deployment");
    assert_eq!(
        deployment["metadata"]["name"],
        "vm-import-controller-harvester-vm-import-controller"
    );
    assert_eq!(deployment["metadata"]["namespace"], NAMESPACE);
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["strategy"], json!({"type": "Recreate"}));
    let pod_labels = json!({
        "app.kubernetes.io/name": "harvester-vm-import-controller",
        "app.kubernetes.io/instance": RELEASE,
    });
    assert_eq!(spec["selector"]["matchLabels"], pod_labels);
    assert_eq!(spec["template"]["metadata"]["labels"], pod_labels);

    let pod = &spec["template"]["spec"];
    let service_account = only(&objects, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], service_account["metadata"]["name"]);
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["preference"]["matchExpressions"]
            [0],
        json!({"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"})
    );
    assert_eq!(pod["volumes"], json!([{"name": "storage", "emptyDir": {}}]));

    let c = container(&objects);
    // vm-import's own image at the chart's appVersion, never upstream's (whose binary rejects these
    // args), pulled once.
    let app_version = chart_app_version();
    assert_eq!(c["image"], format!("ghcr.io/vm-import/vm-import:{app_version}"));
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "storage", "mountPath": "/tmp"}])
    );
    assert_eq!(c["securityContext"], json!({"runAsUser": 0}));
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}})
    );
    assert_eq!(
        args(&objects),
        [
            "--image-dir=/tmp/vm-import-controller",
            "--listen=0.0.0.0:8080",
            "--metrics-listen=0.0.0.0:9090",
            "--max-concurrent-imports=4",
            "--max-imports-per-host=2",
            "--image-dir-reserve=1Gi",
            "--served-format=qcow2",
            "--leader-election-namespace=harvester-system",
        ]
    );
    assert_eq!(
        env(&objects),
        set_of(&[
            "POD_NAME<-metadata.name",
            "POD_NAMESPACE<-metadata.namespace",
            "SVC_ADDRESS=harvester-vm-import-controller.harvester-system.svc",
            "LOG_FORMAT=text",
        ])
    );
    assert_eq!(
        c["ports"],
        json!([
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        ])
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(
            (get["path"].as_str(), get["port"].as_str()),
            (Some(path), Some("metrics")),
            "{probe}"
        );
    }

    let service = only(&objects, "Service");
    assert_eq!(service["metadata"]["name"], "harvester-vm-import-controller");
    assert_eq!(service["spec"]["selector"], pod_labels);
    assert_eq!(
        service["spec"]["ports"],
        json!([
            {"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080},
            {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": "metrics"},
        ])
    );
}

#[test]
fn harvester_addon_values_name_the_deployment_as_harvester_looks_it_up() {
    let objects = render(ADDON);
    let deployment = only(&objects, "Deployment");
    assert_eq!(deployment["metadata"]["name"], "harvester-vm-import-controller");
    // The Addon sets only the tag: the repository stays vm-import's.
    assert_eq!(container(&objects)["image"], "ghcr.io/vm-import/vm-import:v9.9.9");
    assert_eq!(
        only(&objects, "Service")["metadata"]["name"],
        "harvester-vm-import-controller"
    );
    assert_eq!(
        only(&objects, "ClusterRole")["metadata"]["name"],
        "harvester-vm-import-controller-role"
    );
    let binding = only(&objects, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "harvester-vm-import-controller-role");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "harvester-vm-import-controller", "namespace": NAMESPACE}])
    );
}

#[test]
fn pvc_claim_puts_tmp_on_a_labelled_pvc_with_either_class_key() {
    let base = [
        "fullnameOverride=harvester-vm-import-controller",
        "pvcClaim.enabled=true",
        "pvcClaim.size=50Gi",
    ];
    let with = |extra: &[&str]| render(&[&base[..], extra].concat());
    for objects in [
        with(&["pvcClaim.storageClassName=harvester-longhorn"]),
        with(&["pvcClaim.storageClass=harvester-longhorn"]),
        with(&[
            "pvcClaim.storageClassName=harvester-longhorn",
            "pvcClaim.storageClass=other",
        ]),
    ] {
        let pvc = only(&objects, "PersistentVolumeClaim");
        assert_eq!(pvc["metadata"]["name"], "harvester-vm-import-controller");
        assert_eq!(pvc["metadata"]["namespace"], NAMESPACE);
        assert_eq!(
            pvc["metadata"]["labels"]["app.kubernetes.io/name"],
            "harvester-vm-import-controller"
        );
        assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
        assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "50Gi");
        assert_eq!(pvc["spec"]["storageClassName"], "harvester-longhorn");

        let pod = &only(&objects, "Deployment")["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"],
            json!([{"name": "storage", "persistentVolumeClaim": {"claimName": "harvester-vm-import-controller"}}])
        );
        assert_eq!(
            container(&objects)["volumeMounts"],
            json!([{"name": "storage", "mountPath": "/tmp"}])
        );
    }

    // "-" asks for no dynamic provisioning; no class at all leaves it to the cluster's default.
    let objects = with(&["pvcClaim.storageClass=-"]);
    assert_eq!(
        only(&objects, "PersistentVolumeClaim")["spec"]["storageClassName"],
        ""
    );
    let objects = with(&[]);
    assert!(
        only(&objects, "PersistentVolumeClaim")["spec"]
            .get("storageClassName")
            .is_none()
    );

    // Even with nameOverride the PVC keeps the label Harvester's storage-network webhook looks for.
    let objects = with(&["nameOverride=importer"]);
    let pvc = only(&objects, "PersistentVolumeClaim");
    assert_eq!(
        pvc["metadata"]["labels"]["app.kubernetes.io/name"],
        "harvester-vm-import-controller"
    );
}

#[test]
fn own_values_reach_args_env_and_ports() {
    let objects = render(&[
        "imports.maxConcurrent=8",
        "imports.maxPerHost=3",
        "imports.imageDirReserve=20Gi",
        "imports.servedFormat=raw",
        "imports.importBytesPerSecond=100Mi",
        "imports.sourceBytesPerSecond=1Gi",
        "imports.conversionThreads=2",
        "metrics.port=9191",
        "logFormat=json",
        "debug=true",
        "svcAddress=importer.example.test",
    ]);
    let given = args(&objects);
    for expected in [
        "--metrics-listen=0.0.0.0:9191",
        "--max-concurrent-imports=8",
        "--max-imports-per-host=3",
        "--image-dir-reserve=20Gi",
        "--served-format=raw",
        "--import-bytes-per-second=100Mi",
        "--source-bytes-per-second=1Gi",
        "--conversion-threads=2",
    ] {
        assert!(given.contains(&expected), "{expected} in {given:?}");
    }
    let env = env(&objects);
    for expected in [
        "LOG_FORMAT=json",
        "DEBUG=true",
        "SVC_ADDRESS=importer.example.test",
    ] {
        assert!(env.contains(expected), "{expected} in {env:?}");
    }
    let c = container(&objects);
    assert_eq!(
        c["ports"][1],
        json!({"name": "metrics", "containerPort": 9191, "protocol": "TCP"})
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(
        only(&objects, "Service")["spec"]["ports"][1],
        json!({"name": "metrics", "protocol": "TCP", "port": 9191, "targetPort": "metrics"})
    );

    let objects = render(&["metrics.service=false", "leaderElection.enabled=false"]);
    assert_eq!(
        only(&objects, "Service")["spec"]["ports"],
        json!([{"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080}])
    );
    assert!(args(&objects).contains(&"--no-leader-election"));
    assert!(
        !args(&objects)
            .iter()
            .any(|a| a.starts_with("--leader-election-namespace"))
    );
    assert!(!kinds(&objects).contains("Role") && !kinds(&objects).contains("RoleBinding"));

    // Outside harvester-system the image URLs must name the Service where it actually is.
    let manifest = succeeded("helm template", helm_template(RELEASE, "imports", &[], &[]));
    assert!(
        manifest.contains("harvester-vm-import-controller.imports.svc"),
        "{manifest}"
    );
}

#[test]
fn rbac_is_exactly_what_the_controller_needs() {
    let objects = render(ADDON);
    let cluster_role = only(&objects, "ClusterRole");
    assert_eq!(grants_of(cluster_role), expand(CLUSTER_RULES));
    let role = only(&objects, "Role");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(grants_of(role), expand(LEASE_RULES));
    for grant in grants_of(cluster_role).iter().chain(&grants_of(role)) {
        assert!(
            [&grant.0, &grant.1, &grant.3].iter().all(|s| s.as_str() != "*"),
            "wildcard in {grant:?}"
        );
    }
    let binding = only(&objects, "RoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], "harvester-vm-import-controller");
}

/// Deletes what a test applied for real, however the test ends.
struct Applied {
    manifest: String,
    namespace: String,
}

impl Drop for Applied {
    fn drop(&mut self) {
        let out = run(
            kubectl().args(["delete", "--ignore-not-found", "-f", "-"]),
            &self.manifest,
        );
        if !out.status.success() {
            eprintln!("cleanup: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = kubectl()
            .args(["delete", "namespace", self.namespace.as_str(), "--wait=false"])
            .output();
    }
}

/// One SubjectAccessReview for the chart's ServiceAccount.
fn review(user: &str, namespace: Option<&str>, group: &str, resource: &str, name: &str, verb: &str) -> Value {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let mut attributes = json!({"verb": verb, "group": group, "resource": resource});
    for (key, value) in [
        ("subresource", subresource),
        ("name", name),
        ("namespace", namespace.unwrap_or("")),
    ] {
        if !value.is_empty() {
            attributes[key] = json!(value);
        }
    }
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "resourceAttributes": attributes},
    })
}

#[test]
fn service_account_may_do_what_it_needs_and_nothing_upstream_allowed_beyond() {
    // A release of its own (its cluster-scoped names are unique) whose RBAC is really created.
    let release = format!("rbac-{}", std::process::id());
    let namespace = release.clone();
    let manifest = succeeded(
        "helm template",
        helm_template(
            &release,
            &namespace,
            &[],
            &[
                "--show-only",
                "templates/rbac.yaml",
                "--show-only",
                "templates/serviceaccount.yaml",
            ],
        ),
    );
    succeeded(
        "create namespace",
        kubectl()
            .args(["create", "namespace", namespace.as_str()])
            .output()
            .expect("kubectl"),
    );
    let applied = Applied { manifest, namespace };
    succeeded(
        "kubectl apply",
        run(kubectl().args(["apply", "-f", "-"]), &applied.manifest),
    );

    let user = format!(
        "system:serviceaccount:{}:{release}-harvester-vm-import-controller",
        applied.namespace
    );
    let cluster_scoped = ["customresourcedefinitions", "storageclasses"];
    let mut expected = Vec::new();
    for (rules, namespace) in [
        (CLUSTER_RULES, "default"),
        (LEASE_RULES, applied.namespace.as_str()),
    ] {
        for (group, resource, name, verb) in expand(rules) {
            let namespace = (!cluster_scoped.contains(&resource.as_str())).then_some(namespace);
            expected.push((review(&user, namespace, &group, &resource, &name, &verb), true));
        }
    }
    let ns = Some(applied.namespace.as_str());
    for (namespace, group, resource, name, verb) in [
        (Some("default"), "kubevirt.io", "virtualmachines", "", "update"),
        (Some("default"), "kubevirt.io", "virtualmachines", "", "delete"),
        (Some("default"), "", "secrets", "", "create"),
        (Some("default"), "", "secrets", "", "update"),
        (Some("default"), "", "persistentvolumeclaims", "", "delete"),
        (Some("default"), "", "pods", "", "get"),
        (Some("default"), "", "configmaps", "", "list"),
        (
            Some("default"),
            "harvesterhci.io",
            "virtualmachineimages",
            "",
            "deletecollection",
        ),
        (
            Some("default"),
            "migration.harvesterhci.io",
            "virtualmachineimports",
            "",
            "create",
        ),
        (
            Some("default"),
            "migration.harvesterhci.io",
            "virtualmachineimports",
            "",
            "delete",
        ),
        (
            Some("default"),
            "migration.harvesterhci.io",
            "vmwaresources",
            "",
            "create",
        ),
        (
            Some("default"),
            "k8s.cni.cncf.io",
            "network-attachment-definitions",
            "",
            "create",
        ),
        (Some("default"), "", "events", "", "delete"),
        (
            None,
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "virtualmachines.kubevirt.io",
            "patch",
        ),
        (
            None,
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "vmwaresources.migration.harvesterhci.io",
            "delete",
        ),
        (None, "rbac.authorization.k8s.io", "clusterroles", "", "bind"),
        (
            ns,
            "coordination.k8s.io",
            "leases",
            "someone-elses-lease",
            "update",
        ),
        (
            Some("kube-system"),
            "coordination.k8s.io",
            "leases",
            "vm-import-controller",
            "get",
        ),
        (Some("kube-system"), "coordination.k8s.io", "leases", "", "create"),
    ] {
        expected.push((review(&user, namespace, group, resource, name, verb), false));
    }

    let reviews: String = expected.iter().map(|(r, _)| format!("---\n{r}\n")).collect();
    let answers = json_objects(&succeeded(
        "kubectl create subjectaccessreviews",
        run(kubectl().args(["create", "-o", "json", "-f", "-"]), &reviews),
    ));
    assert_eq!(answers.len(), expected.len());
    let wrong: Vec<String> = expected
        .iter()
        .zip(&answers)
        .filter(|((_, allowed), answer)| answer["status"]["allowed"].as_bool() != Some(*allowed))
        .map(|((asked, allowed), _)| {
            format!(
                "expected allowed={allowed}: {}",
                asked["spec"]["resourceAttributes"]
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "the apiserver's authorizer disagrees:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn schema_rejects_values_the_controller_cannot_run_with() {
    for (value, complaint) in [
        ("replicaCount=2", "/replicaCount"),
        ("logFormat=yaml", "/logFormat"),
        ("imports.maxConcurrent=0", "/imports/maxConcurrent"),
        ("imports.maxPerHost=0", "/imports/maxPerHost"),
        ("imports.imageDirReserve=1GB", "/imports/imageDirReserve"),
        ("imports.servedFormat=vmdk", "/imports/servedFormat"),
        (
            "imports.importBytesPerSecond=fast",
            "/imports/importBytesPerSecond",
        ),
        ("metrics.port=8080", "/metrics/port"),
        ("pvcClaim.size=lots", "/pvcClaim/size"),
    ] {
        let out = helm_template(RELEASE, NAMESPACE, &[value], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value} was accepted");
        assert!(stderr.contains(complaint), "{value}: {stderr}");
    }
}
