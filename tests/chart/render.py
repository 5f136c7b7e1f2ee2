"""Renders the Helm chart for tests/serving/chart.rs with the real Helm engine
(helm-python-sdk) and validates every rendered object against the Kubernetes
JSON schemas (kubernetes-validate) or, for the project's own custom resource,
against the CRD's OpenAPI schema.

Reads a JSON request on stdin:
  {"chart": DIR, "crds": DIR, "kubeVersion": "1.37.0",
   "cases": [{"values": {...}, "release": NAME, "namespace": NS}]}
Writes a JSON answer on stdout:
  {"lint": {...}, "cases": [{"error": null | MESSAGE, "notes": TEXT,
   "objects": [{"template": PATH, "object": {...},
                "validation": "valid" | "no-schema" | "invalid: ..."}]}]}
A case whose values the chart's schema rejects, or whose templates fail,
answers with "error" and no objects.
"""

import glob
import json
import sys

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml


def crd_schemas(crd_dir):
    """(apiVersion, kind) -> openAPIV3Schema of every CRD in the directory."""
    schemas = {}
    for path in sorted(glob.glob(crd_dir + "/*.yaml")):
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd:
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    api_version = "%s/%s" % (spec["group"], version["name"])
                    schemas[(api_version, spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def validate(obj, kube_version, custom):
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in custom:
        try:
            jsonschema.validate(obj, custom[key])
            return "valid"
        except jsonschema.ValidationError as e:
            return "invalid: %s: %s" % (".".join(str(p) for p in e.absolute_path), e.message)
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
        return "valid"
    except kubernetes_validate.SchemaNotFoundError:
        return "no-schema"
    except kubernetes_validate.ValidationError as e:
        return "invalid: %s: %s" % (".".join(str(p) for p in e.path), e.message)


def render_case(chart, case, kube_version, custom):
    values = case.get("values") or {}
    try:
        chart.validate_schema(values)
        manifests = chart.render(
            values, name=case["release"], namespace=case["namespace"], is_install=True
        )
    except helm.HelmError as e:
        return {"error": str(e), "notes": "", "objects": []}
    objects, notes = [], ""
    for template in sorted(manifests):
        text = manifests[template]
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for obj in yaml.safe_load_all(text):
            if obj:
                objects.append(
                    {"template": template, "object": obj, "validation": validate(obj, kube_version, custom)}
                )
    return {"error": None, "notes": notes, "objects": objects}


def main():
    request = json.load(sys.stdin)
    kube_version = request.get("kubeVersion", "1.37.0")
    custom = crd_schemas(request["crds"])
    lint = helm.lint(request["chart"], strict=True, kube_version="v" + kube_version)
    with helm.Chart.load(request["chart"]) as chart:
        cases = [render_case(chart, case, kube_version, custom) for case in request["cases"]]
        answer = {"lint": lint, "metadata": chart.metadata, "cases": cases}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
