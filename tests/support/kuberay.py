"""The RayJob schema of KubeRay v1.5.1 (apiVersion ray.io/v1), the version cluster/kuberay/ names.

A JSON Schema of the fields of RayJobSpec / RayClusterSpec / HeadGroupSpec / WorkerGroupSpec /
AutoscalerOptions / AuthOptions as KubeRay v1.5.1 defines them (ray-operator/apis/ray/v1), with
unknown fields refused, as the API server's structural schema prunes or rejects them. The pod
templates inside are checked against Kubernetes' own schema (kubernetes-validate) by the tests.
"""
from __future__ import annotations

KUBERAY_VERSION = "1.5.1"
KUBERNETES_VERSION = "1.33"

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_TEMPLATE = {"type": "object"}  # checked separately against Kubernetes' PodTemplateSpec

_AUTOSCALER_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "resources": {"type": "object"}, "image": {"type": "string"}, "imagePullPolicy": {"type": "string"},
        "securityContext": {"type": "object"}, "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]}, "version": {"enum": ["v1", "v2"]},
        "env": {"type": "array"}, "envFrom": {"type": "array"}, "volumeMounts": {"type": "array"},
    },
}

_HEAD_GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["template"],
    "properties": {
        "template": _POD_TEMPLATE, "headService": {"type": "object"}, "enableIngress": {"type": "boolean"},
        "rayStartParams": _STRING_MAP, "serviceType": {"type": "string"},
    },
}

_WORKER_GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groupName", "template"],
    "properties": {
        "suspend": {"type": "boolean"}, "groupName": {"type": "string"},
        "replicas": {"type": "integer", "minimum": 0}, "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0}, "idleTimeoutSeconds": {"type": "integer"},
        "resources": _STRING_MAP, "rayStartParams": _STRING_MAP, "template": _POD_TEMPLATE,
        "scaleStrategy": {"type": "object"}, "numOfHosts": {"type": "integer", "minimum": 1}, "labels": _STRING_MAP,
    },
}

_CLUSTER_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["headGroupSpec"],
    "properties": {
        "upgradeStrategy": {"type": "object"},
        "authOptions": {"type": "object", "additionalProperties": False, "properties": {"mode": {"enum": ["disabled", "token"]}}},
        "suspend": {"type": "boolean"}, "managedBy": {"type": "string"},
        "autoscalerOptions": _AUTOSCALER_OPTIONS, "headServiceAnnotations": _STRING_MAP,
        "enableInTreeAutoscaling": {"type": "boolean"}, "gcsFaultToleranceOptions": {"type": "object"},
        "headGroupSpec": _HEAD_GROUP, "rayVersion": {"type": "string"},
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
    },
}

RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "activeDeadlineSeconds": {"type": "integer"}, "backoffLimit": {"type": "integer"},
                "rayClusterSpec": _CLUSTER_SPEC, "submitterPodTemplate": _POD_TEMPLATE, "metadata": _STRING_MAP,
                "clusterSelector": _STRING_MAP, "submitterConfig": {"type": "object"}, "managedBy": {"type": "string"},
                "deletionStrategy": {"type": "object"}, "entrypoint": {"type": "string"}, "runtimeEnvYAML": {"type": "string"},
                "jobId": {"type": "string"}, "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "entrypointResources": {"type": "string"}, "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"}, "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "shutdownAfterJobFinishes": {"type": "boolean"}, "suspend": {"type": "boolean"},
            },
        },
    },
}


def pod_templates(job: dict) -> list[dict]:
    """Every pod template of a RayJob: the head's, each worker group's, the submitter's."""
    cluster = job["spec"]["rayClusterSpec"]
    found = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in job["spec"]:
        found.append(job["spec"]["submitterPodTemplate"])
    return found
