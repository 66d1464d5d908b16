//! The Kubernetes Job that runs `redis-fleet rebalance` for one plan (pure: built as a value),
//! and how the operator reads a Job back: whose it is, whether it ended.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::CachePolicy;
use crate::operator::redis_instance::build::restricted_security_context;

/// Label on rebalance Jobs and their pods.
pub const COMPONENT_LABEL: (&str, &str) = ("app.kubernetes.io/component", "rebalance");

/// Label naming the policy of a rebalance Job.
pub const POLICY_LABEL: &str = "redisfleet.io/policy";

/// Label naming the policy's namespace (the Job may run elsewhere).
pub const POLICY_NAMESPACE_LABEL: &str = "redisfleet.io/policy-namespace";

/// How rebalance Jobs are made.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    /// Namespace of the Jobs; `None`: the policy's own (then the Job is owned by the policy).
    pub namespace: Option<String>,
    /// The redis-fleet image.
    pub image: String,
    /// Its pull policy.
    pub pull_policy: Option<String>,
    /// ServiceAccount of the Job's pod (needs to read the policy, its ConfigMap and Secrets,
    /// and to patch the policy's status).
    pub service_account: Option<String>,
    /// Pod retries by the Job controller. 0: each attempt is one pod, and the operator retries
    /// with a new Job — a new mover token, so an old pod that lives on cannot interfere.
    pub backoff_limit: i32,
    /// How long the Job waits for the sidecars to converge (`--converge-timeout`).
    pub converge_timeout: std::time::Duration,
    /// Where and with what the Job's pod runs (the chart's `rebalance.job` values).
    pub pod: JobPod,
}

/// Scheduling and resources of a rebalance Job's pod, as the operator is told them
/// (`--rebalance-pod`, a JSON object; the chart passes its `rebalance.job` values). Absent
/// fields keep the defaults: [`default_resources`], no node selector, tolerations or
/// priority class.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobPod {
    /// Requests and limits of the rebalance container.
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the pod must match.
    #[serde(default)]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the pod.
    #[serde(default)]
    pub tolerations: Option<Vec<Toleration>>,
    /// PriorityClass of the pod; empty means none.
    #[serde(default)]
    pub priority_class_name: Option<String>,
}

impl JobPod {
    /// Reads the JSON object of `--rebalance-pod`.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// The rebalance container's resources unless told otherwise: it streams keys in batches
/// (`keysPerSecond`, `batchSize`), so memory stays flat whatever the instance's size.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_owned(), Quantity("100m".to_owned())),
                ("memory".to_owned(), Quantity("64Mi".to_owned())),
            ]
            .into(),
        ),
        limits: Some([("memory".to_owned(), Quantity("512Mi".to_owned()))].into()),
        ..ResourceRequirements::default()
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            namespace: None,
            image: "ghcr.io/redis-fleet/redis-fleet:0.1.0".to_owned(),
            pull_policy: None,
            service_account: None,
            backoff_limit: 0,
            converge_timeout: std::time::Duration::from_secs(120),
            pod: JobPod::default(),
        }
    }
}

/// `<policy>-rebalance-<plan>-<attempt>`, shortened to a valid name.
pub fn job_name(policy: &str, plan_id: i64, attempt: i32) -> String {
    let suffix = format!("-rebalance-{plan_id}-{attempt}");
    let keep = 63usize.saturating_sub(suffix.len());
    let base: String = policy.chars().take(keep).collect();
    format!("{}{suffix}", base.trim_end_matches('-'))
}

/// The Job for `plan_id` of `policy`.
pub fn build(policy: &CachePolicy, plan_id: i64, attempt: i32, settings: &JobSettings) -> Job {
    let policy_name = policy.name_any();
    let policy_ns = policy.namespace().unwrap_or_default();
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| policy_ns.clone());
    let name = job_name(&policy_name, plan_id, attempt);
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name", "redis-fleet"),
        COMPONENT_LABEL,
        ("app.kubernetes.io/managed-by", "redis-fleet"),
        (POLICY_LABEL, policy_name.as_str()),
        (POLICY_NAMESPACE_LABEL, policy_ns.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([("redisfleet.io/plan".to_owned(), plan_id.to_string())])
    .collect();
    let owner = (namespace == policy_ns)
        .then(|| policy.controller_owner_ref(&()))
        .flatten();
    let container = Container {
        name: "rebalance".to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.pull_policy.clone(),
        args: Some(vec![
            "rebalance".to_owned(),
            "--policy".to_owned(),
            format!("{policy_ns}/{policy_name}"),
            "--plan".to_owned(),
            plan_id.to_string(),
            "--attempt".to_owned(),
            attempt.to_string(),
            "--converge-timeout".to_owned(),
            format!("{}ms", settings.converge_timeout.as_millis()),
        ]),
        env: Some(vec![
            EnvVar {
                name: "POD_NAME".to_owned(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".to_owned(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            EnvVar {
                name: "REDIS_FLEET_LOG_FORMAT".to_owned(),
                value: Some("json".to_owned()),
                ..EnvVar::default()
            },
        ]),
        resources: Some(
            settings
                .pod
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        security_context: Some(restricted_security_context()),
        ..Container::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(labels.clone()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(settings.backoff_limit),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    service_account_name: settings.service_account.clone(),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    node_selector: settings.pod.node_selector.clone().filter(|m| !m.is_empty()),
                    tolerations: settings.pod.tolerations.clone().filter(|t| !t.is_empty()),
                    priority_class_name: settings
                        .pod
                        .priority_class_name
                        .clone()
                        .filter(|p| !p.is_empty()),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// The policy a rebalance Job works for, from its labels (the Job may run in another
/// namespace than the policy, so the owner reference is not always there).
pub fn policy_of(job: &Job) -> Option<kube::runtime::reflector::ObjectRef<CachePolicy>> {
    let labels = job.metadata.labels.as_ref()?;
    let name = labels.get(POLICY_LABEL)?;
    let namespace = labels.get(POLICY_NAMESPACE_LABEL)?;
    Some(kube::runtime::reflector::ObjectRef::new(name).within(namespace))
}

/// Whether a Job has finished, and how: `Some(true)` succeeded, `Some(false)` failed.
pub fn outcome(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    if conditions
        .iter()
        .any(|c| c.type_ == "Complete" && c.status == "True")
    {
        Some(true)
    } else if conditions
        .iter()
        .any(|c| c.type_ == "Failed" && c.status == "True")
    {
        Some(false)
    } else {
        None
    }
}

/// When the Job ended (its Complete or Failed condition), if it did.
pub fn ended_at(job: &Job) -> Option<k8s_openapi::jiff::Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .filter(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .find_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        let mut p = CachePolicy::new(
            "shop",
            serde_json::from_value(serde_json::json!({})).unwrap(),
        );
        p.metadata.namespace = Some("apps".into());
        p.metadata.uid = Some("uid".into());
        p
    }

    #[test]
    fn the_job_runs_the_rebalance_command_hardened_and_owned_by_the_policy() {
        let job = build(&policy(), 17, 1, &JobSettings::default());
        assert_eq!(job.metadata.name.as_deref(), Some("shop-rebalance-17-1"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(
            job.metadata.owner_references.as_ref().unwrap()[0].kind,
            "CachePolicy"
        );
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "rebalance",
                "--policy",
                "apps/shop",
                "--plan",
                "17",
                "--attempt",
                "1",
                "--converge-timeout",
                "120000ms"
            ]
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (sc.run_as_non_root, sc.read_only_root_filesystem),
            (Some(true), Some(true))
        );
        assert!(c.resources.as_ref().unwrap().limits.is_some());
    }

    #[test]
    fn jobs_elsewhere_are_labelled_not_owned() {
        let settings = JobSettings {
            namespace: Some("redis-fleet".into()),
            ..JobSettings::default()
        };
        let job = build(&policy(), 3, 2, &settings);
        assert!(job.metadata.owner_references.is_none());
        let woken = policy_of(&job).unwrap();
        assert_eq!(
            (woken.name.as_str(), woken.namespace.as_deref()),
            ("shop", Some("apps"))
        );
        let labels = job.metadata.labels.unwrap();
        assert_eq!(
            (
                labels[POLICY_LABEL].as_str(),
                labels[POLICY_NAMESPACE_LABEL].as_str()
            ),
            ("shop", "apps")
        );
    }

    #[test]
    fn the_pod_settings_place_and_size_the_pod() {
        let pod = JobPod::from_json(
            r#"{"resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
                "nodeSelector": {"pool": "batch"},
                "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
                "priorityClassName": "low"}"#,
        )
        .unwrap();
        let settings = JobSettings {
            pod,
            ..JobSettings::default()
        };
        let spec = build(&policy(), 1, 1, &settings)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(spec.node_selector.unwrap()["pool"], "batch");
        assert_eq!(spec.tolerations.unwrap()[0].key.as_deref(), Some("batch"));
        assert_eq!(spec.priority_class_name.as_deref(), Some("low"));
        let resources = spec.containers[0].resources.clone().unwrap();
        assert_eq!(resources.limits.unwrap()["memory"], Quantity("1Gi".into()));
        assert_eq!(resources.requests.unwrap()["cpu"], Quantity("250m".into()));

        // Empty values (the chart's defaults) change nothing.
        let empty = JobPod::from_json(
            r#"{"nodeSelector": {}, "tolerations": [], "priorityClassName": ""}"#,
        )
        .unwrap();
        let spec = build(
            &policy(),
            1,
            1,
            &JobSettings {
                pod: empty,
                ..JobSettings::default()
            },
        )
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
        assert_eq!(
            (
                spec.node_selector,
                spec.tolerations,
                spec.priority_class_name
            ),
            (None, None, None)
        );
        assert_eq!(spec.containers[0].resources, Some(default_resources()));

        // A misspelt key is refused, not ignored.
        assert!(JobPod::from_json(r#"{"nodeSelecter": {}}"#).is_err());
    }

    #[test]
    fn names_stay_valid() {
        let long = "x".repeat(80);
        let name = job_name(&long, 123456, 9);
        assert!(name.len() <= 63 && name.ends_with("-rebalance-123456-9"));
    }
}
