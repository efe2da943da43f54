//! The VoiceCluster CRD in a real API server: defaults are applied, and bad
//! specs are refused with a message that says what is wrong.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use serde_json::{Value, json};
use voicecluster_api::VoiceCluster;
use voicecluster_e2e::{TestNamespace, client, eventually};

const CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../crds/voicecluster.io_voiceclusters.yaml"
);

/// Applies the checked-in CRD (what `helm install` ships) and waits until
/// the API server serves it.
async fn install_crd(client: &Client) -> Result<()> {
    let yaml = std::fs::read_to_string(CRD_FILE).context("reading crds/")?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).context("parsing crds/")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = VoiceCluster::crd_name();
    crds.patch(
        name,
        &PatchParams::apply("voicecluster-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying the CRD")?;
    eventually("CRD Established", Duration::from_secs(60), || async {
        let c = crds.get(name).await.map_err(|e| e.to_string())?;
        let established = c
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            Ok(())
        } else {
            Err(format!("{:?}", c.status))
        }
    })
    .await
}

fn voice_clusters(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VoiceCluster>(&()))
}

fn manifest(name: &str, spec: Value) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "voicecluster.io/v1alpha1",
        "kind": "VoiceCluster",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

/// Merges `patch` into a valid spec, so each case breaks exactly one thing.
fn valid_spec_with(patch: Value) -> Value {
    let mut spec = json!({"sip": {"domain": "voice.example.com"}});
    merge(&mut spec, patch);
    spec
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

#[tokio::test]
async fn minimal_spec_is_accepted_and_defaulted() -> Result<()> {
    let client = client().await?;
    install_crd(&client).await?;
    let ns = TestNamespace::create(&client, "crd-ok").await?;
    let api = voice_clusters(&client, &ns.name);
    let created = api
        .create(
            &PostParams::default(),
            &manifest("minimal", valid_spec_with(json!({})))?,
        )
        .await
        .context("creating a minimal VoiceCluster")?;
    let spec = &created.data["spec"];
    ensure!(
        spec["signal"]["replicas"] == 2,
        "signal.replicas defaulted to {}",
        spec["signal"]["replicas"]
    );
    ensure!(
        spec["signal"]["callLegMode"] == "Remotely",
        "callLegMode {}",
        spec["signal"]["callLegMode"]
    );
    ensure!(
        spec["media"]["nodeSelector"]["voicecluster.io/internet-facing"] == "true",
        "media.nodeSelector {}",
        spec["media"]["nodeSelector"]
    );
    ensure!(spec["media"]["rtpPortRange"] == json!({"min": 20000, "max": 29999}));
    ensure!(
        spec["sip"]["transports"] == json!(["UDP", "TCP"]),
        "transports {}",
        spec["sip"]["transports"]
    );
    ensure!(spec["failover"]["mode"] == "Automatic");
    ns.delete().await
}

#[tokio::test]
async fn bad_specs_are_refused_with_a_clear_message() -> Result<()> {
    let client = client().await?;
    install_crd(&client).await?;
    let ns = TestNamespace::create(&client, "crd-bad").await?;
    let api = voice_clusters(&client, &ns.name);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "port range min > max",
            valid_spec_with(json!({"media": {"rtpPortRange": {"min": 30000, "max": 20000}}})),
            "rtpPortRange.min must not be greater than rtpPortRange.max",
        ),
        (
            "zero signal replicas",
            valid_spec_with(json!({"signal": {"replicas": 0}})),
            "spec.signal.replicas: Invalid value: 0: spec.signal.replicas in body should be greater than or equal to 1",
        ),
        (
            "unknown call-leg mode",
            valid_spec_with(json!({"signal": {"callLegMode": "Sideways"}})),
            "spec.signal.callLegMode: Unsupported value: \"Sideways\"",
        ),
        (
            "Deployment placement without replicas",
            valid_spec_with(json!({"media": {"placement": {"kind": "Deployment"}}})),
            "replicas is required with kind Deployment",
        ),
        (
            "DaemonSet placement with replicas",
            valid_spec_with(json!({"media": {"placement": {"kind": "DaemonSet", "replicas": 3}}})),
            "not allowed with kind DaemonSet",
        ),
        (
            "RTP port below 1024",
            valid_spec_with(json!({"media": {"rtpPortRange": {"min": 80, "max": 2000}}})),
            "spec.media.rtpPortRange.min in body should be greater than or equal to 1024",
        ),
        (
            "SIP port out of range",
            valid_spec_with(json!({"sip": {"port": 70000}})),
            "spec.sip.port in body should be less than or equal to 65535",
        ),
        (
            "repeated transport",
            valid_spec_with(json!({"sip": {"transports": ["UDP", "UDP"]}})),
            "spec.sip.transports[1]: Duplicate value",
        ),
        (
            "unknown transport",
            valid_spec_with(json!({"sip": {"transports": ["SCTP"]}})),
            "Unsupported value: \"SCTP\"",
        ),
        (
            "missing SIP domain",
            json!({"sip": {}}),
            "spec.sip.domain: Required value",
        ),
        (
            "annotation source without annotation",
            valid_spec_with(json!({"media": {"publicAddress": {"source": "NodeAnnotation"}}})),
            "annotation is required with source NodeAnnotation",
        ),
        (
            "bad currency",
            valid_spec_with(json!({"billing": {"currency": "euro"}})),
            "spec.billing.currency in body should match",
        ),
        (
            "price that is not a decimal",
            valid_spec_with(
                json!({"billing": {"rates": [{"prefix": "33", "pricePerMinute": "cheap"}]}}),
            ),
            "spec.billing.rates[0].pricePerMinute in body should match",
        ),
        (
            "repeated rate prefix",
            valid_spec_with(json!({"billing": {"rates": [
                {"prefix": "33", "pricePerMinute": "0.01"},
                {"prefix": "33", "pricePerMinute": "0.02"}]}})),
            "spec.billing.rates[1]: Duplicate value: {\"prefix\":\"33\"}",
        ),
        (
            "unknown failover mode",
            valid_spec_with(json!({"failover": {"mode": "Sometimes"}})),
            "spec.failover.mode: Unsupported value: \"Sometimes\"",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, spec, want)) in cases.into_iter().enumerate() {
        match api
            .create(
                &PostParams::default(),
                &manifest(&format!("bad-{i}"), spec)?,
            )
            .await
        {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(status)) if status.message.contains(want) => {}
            Err(e) => failures.push(format!(
                "{what}: refused with {e}, want a message containing {want:?}"
            )),
        }
    }
    ensure!(
        failures.is_empty(),
        "bad specs not refused as expected:\n{}",
        failures.join("\n")
    );
    ns.delete().await
}
