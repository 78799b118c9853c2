"""Run stages on a Ray cluster (`submit`) and check the cluster files in `cluster/`
(`files`, using the stage demands of `checks`)."""

from chimed_ray.cluster.checks import commands_in_text, parse_stage_command
from chimed_ray.cluster.files import check_kuberay_manifest, check_launcher_file, validate_cluster_files
from chimed_ray.cluster.submit import WORKING_DIR_EXCLUDES, job_runtime_env, stage_command, submit_stage, wait_for_job

__all__ = [
    "WORKING_DIR_EXCLUDES",
    "check_kuberay_manifest",
    "check_launcher_file",
    "commands_in_text",
    "job_runtime_env",
    "parse_stage_command",
    "stage_command",
    "submit_stage",
    "validate_cluster_files",
    "wait_for_job",
]
