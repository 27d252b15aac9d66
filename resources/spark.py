"""Spark job runners: one interface, three places a PySpark script runs, all through Dagster Pipes.

    runner.run(context, script, args) -> PipesClientCompletedInvocation

inside an asset: `return runner.run(context, script, args).get_materialize_result()`. The
script opens `dagster_pipes.open_dagster_pipes()` and its `log` lines and reported
metadata reach the asset's run.

- `LocalSparkRunner`: `spark-submit --master local[2]` through `dg.PipesSubprocessClient`.
- `StandaloneSparkRunner`: `spark-submit --master spark://host:port --deploy-mode client`
  through the same client; the driver runs here (so Pipes' temp-file channel works), the
  executors on the cluster's worker (`dp spark-cluster up`).
- `EmrServerlessSparkRunner`: `dagster_aws.pipes.PipesEMRServerlessClient`. Its
  `run(context=, start_job_run_params=, extras=)` takes the boto3 `start_job_run` request
  (applicationId, executionRoleArn, jobDriver.sparkSubmit.{entryPoint, entryPointArguments,
  sparkSubmitParameters}, ...), adds the Pipes bootstrap variables as
  `--conf spark.emr-serverless.driverEnv.<K>=<V>` and the run's tags, starts the job,
  polls it (poll_interval) and reads the job's Pipes messages from CloudWatch Logs (its
  default message reader), so the request enables CloudWatch logging. The script
  is uploaded to `scripts_s3_uri`/<name>-<content hash>.py at each run (a no-op when there), and
  dagster-pipes must be installed in the application's image or shipped with `--py-files`. The
  job cannot read this machine's disk, so its callers stage inputs and outputs in the lake
  (`stages_in_lake()`; assets/telemetry/hour_files.py).

`spark_runner()` is the one place the implementation is chosen, from the settings
(PLATFORM_SPARK_MODE: local | standalone | emr-serverless).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from resources import settings
from resources.aws import AwsClients


class SparkJobRunner(dg.ConfigurableResource):
    """Runs a PySpark script through Dagster Pipes and returns the Pipes results."""

    def run(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        script: str | Path,
        args: list[str],
        extras: dict[str, Any] | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        raise NotImplementedError

    def stages_in_lake(self) -> bool:
        """Whether the job reads and writes lake URIs (a staging prefix) rather than this machine's
        disk: true where the driver or its executors cannot see local files."""
        return False


def _spark_submit() -> str:
    from services.spark_cluster import spark_home

    return str(spark_home() / "bin" / "spark-submit")


class _SparkSubmitRunner(SparkJobRunner):
    """spark-submit in client mode through dg.PipesSubprocessClient (driver on this machine)."""

    conf: dict[str, str] = Field(default_factory=dict, description="extra --conf key=value pairs")
    stage_in_lake: bool = Field(
        default=False,
        description="stage the job's files in the lake (workers on other hosts; an S3 lake needs"
        " hadoop-aws and spark.hadoop.fs.s3.impl in `conf`) instead of this machine's disk",
    )

    def stages_in_lake(self) -> bool:
        return self.stage_in_lake

    def master(self) -> str:
        raise NotImplementedError

    def command(self, script: str | Path, args: list[str]) -> list[str]:
        python = sys.executable  # the driver and the executors use this environment (dagster-pipes in it)
        conf = {
            "spark.pyspark.python": python,
            "spark.pyspark.driver.python": python,
            "spark.driver.host": "127.0.0.1",
            "spark.sql.session.timeZone": "UTC",
            "spark.ui.showConsoleProgress": "false",
            **self.conf,
        }
        command = [_spark_submit(), "--master", self.master(), "--deploy-mode", "client"]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        return [*command, str(Path(script).resolve()), *args]

    def run(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        script: str | Path,
        args: list[str],
        extras: dict[str, Any] | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        from services.spark_cluster import spark_env

        env = spark_env()
        client = dg.PipesSubprocessClient(env={k: env[k] for k in ("SPARK_HOME", "SPARK_LOCAL_IP")})
        command = self.command(script, args)
        context.log.info(f"spark-submit --master {self.master()} {Path(script).name} {' '.join(args)}")
        return client.run(context=context, command=command, extras=extras)


class LocalSparkRunner(_SparkSubmitRunner):
    """Spark in local mode, in the spark-submit process."""

    threads: int = 2

    def master(self) -> str:
        return f"local[{self.threads}]"


class StandaloneSparkRunner(_SparkSubmitRunner):
    """A Spark standalone cluster; `master_url` like spark://127.0.0.1:7077."""

    master_url: str

    def master(self) -> str:
        if not self.master_url.startswith("spark://"):
            raise ValueError(
                f"StandaloneSparkRunner.master_url must be spark://host:port, got {self.master_url!r}"
            )
        return self.master_url


class EmrServerlessSparkRunner(SparkJobRunner):
    """An EMR Serverless application (cannot run on this machine; see the module's docstring)."""

    aws: AwsClients
    application_id: str
    execution_role_arn: str
    scripts_s3_uri: str = Field(description="s3://bucket/prefix the job scripts are uploaded to")
    spark_submit_parameters: str = ""
    cloudwatch_log_group: str | None = None
    poll_interval: float = 5.0

    def stages_in_lake(self) -> bool:
        return True  # the job runs in AWS: it can only read the lake's s3:// URIs

    def entry_point(self, script: str | Path) -> str:
        """The script's S3 URI: as given if s3://, else under scripts_s3_uri named by its content
        (a run always starts the code it was deployed with, even while another version runs)."""
        text = str(script)
        if text.startswith("s3://"):
            return text
        if not self.scripts_s3_uri.startswith("s3://"):
            raise ValueError(
                f"EmrServerlessSparkRunner.scripts_s3_uri must be s3://..., got {self.scripts_s3_uri!r}"
            )
        digest = hashlib.sha256(Path(text).read_bytes()).hexdigest()[:12]
        return f"{self.scripts_s3_uri.rstrip('/')}/{Path(text).stem}-{digest}{Path(text).suffix}"

    def upload_script(self, script: str | Path) -> str:
        """Put a local script at its entry_point URI (once per content); returns the URI."""
        uri = self.entry_point(script)
        if str(script).startswith("s3://"):
            return uri
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        s3 = self.aws.client("s3")
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
        if not any(o["Key"] == key for o in listed):
            s3.put_object(Bucket=bucket, Key=key, Body=Path(script).read_bytes())
        return uri

    def start_job_run_params(
        self, script: str | Path, args: list[str], name: str | None = None
    ) -> dict[str, Any]:
        """The boto3 emr-serverless start_job_run request (the Pipes client adds its env and tags)."""
        spark_submit: dict[str, Any] = {
            "entryPoint": self.entry_point(script),
            "entryPointArguments": [str(a) for a in args],
        }
        if self.spark_submit_parameters:
            spark_submit["sparkSubmitParameters"] = self.spark_submit_parameters
        logging: dict[str, Any] = {"enabled": True}
        if self.cloudwatch_log_group:
            logging["logGroupName"] = self.cloudwatch_log_group
        params: dict[str, Any] = {
            "applicationId": self.application_id,
            "executionRoleArn": self.execution_role_arn,
            "jobDriver": {"sparkSubmit": spark_submit},
            "configurationOverrides": {
                "monitoringConfiguration": {"cloudWatchLoggingConfiguration": logging}
            },
        }
        if name:
            params["name"] = name
        return params

    def run(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        script: str | Path,
        args: list[str],
        extras: dict[str, Any] | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        from dagster_aws.pipes import PipesCloudWatchMessageReader, PipesEMRServerlessClient

        # Both clients from AwsClients, so the local profile's calls go to the moto server.
        client = PipesEMRServerlessClient(
            client=self.aws.client("emr-serverless"),
            message_reader=PipesCloudWatchMessageReader(client=self.aws.client("logs")),
            poll_interval=self.poll_interval,
        )
        self.upload_script(script)
        params = self.start_job_run_params(
            script, args, name=f"{context.run.run_id[:8]}-{Path(str(script)).stem}"
        )
        context.log.info(
            f"EMR Serverless {self.application_id}: {params['jobDriver']['sparkSubmit']['entryPoint']}"
        )
        return client.run(context=context, start_job_run_params=params, extras=extras)


class ConfiguredSparkRunner(SparkJobRunner):
    """The profiles' Spark resource: asks `spark_runner()` at each run, so PLATFORM_SPARK_MODE and
    the standalone cluster's address are read when a job starts, not when the code location loads."""

    aws: AwsClients  # for EMR Serverless (and CloudWatch Logs, where its Pipes messages arrive)

    def run(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        script: str | Path,
        args: list[str],
        extras: dict[str, Any] | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        return spark_runner(self.aws).run(context, script, args, extras)

    def stages_in_lake(self) -> bool:
        return spark_runner(self.aws).stages_in_lake()


def spark_runner(aws: AwsClients | None = None) -> SparkJobRunner:
    """The runner the settings select (read now, at use time); `aws` makes EMR Serverless's clients
    (default: real AWS)."""
    mode = settings.spark_mode()
    if mode == "local":
        return LocalSparkRunner()
    if mode == "standalone":
        url = settings.spark_master_url()
        if not url:
            from services.spark_cluster import status

            cluster = status()
            if cluster is None:
                raise RuntimeError(
                    "PLATFORM_SPARK_MODE=standalone needs PLATFORM_SPARK_MASTER "
                    "or a cluster from `dp spark-cluster up`"
                )
            url = cluster.master_url
        return StandaloneSparkRunner(master_url=url, stage_in_lake=settings.spark_stage_in_lake())
    if mode == "emr-serverless":
        missing = [
            name
            for name, value in (
                ("PLATFORM_EMR_SERVERLESS_APP_ID", settings.emr_serverless_application_id()),
                ("PLATFORM_EMR_SERVERLESS_ROLE_ARN", settings.emr_serverless_role_arn()),
                ("PLATFORM_SPARK_SCRIPTS_S3_URI", settings.spark_scripts_s3_uri()),
            )
            if not value
        ]
        if missing:
            raise RuntimeError(f"PLATFORM_SPARK_MODE=emr-serverless needs {', '.join(missing)}")
        return EmrServerlessSparkRunner(
            aws=aws or AwsClients(),
            application_id=settings.emr_serverless_application_id() or "",
            execution_role_arn=settings.emr_serverless_role_arn() or "",
            scripts_s3_uri=settings.spark_scripts_s3_uri() or "",
        )
    raise ValueError(f"PLATFORM_SPARK_MODE must be local, standalone or emr-serverless, got {mode!r}")
