"""Compile the pipeline and hand it to a KFP server: a new version, then a run or a schedule.

Credentials reach ``kfp.Client`` by one of its own routes, never from a YAML or a log line
(:class:`KfpAuth`): a bearer token (``--existing-token`` or ``$CAMPSEG_KFP_TOKEN``), a session
cookie (``--cookies`` or ``$CAMPSEG_KFP_COOKIES``), a token file (``$KF_PIPELINES_SA_TOKEN_PATH``),
or what ``kfp.Client`` reads itself: ``$KF_PIPELINES_ENDPOINT``, the IAP/OAuth2 client variables
``$KF_PIPELINES_IAP_OAUTH2_CLIENT_ID``, ``$KF_PIPELINES_APP_OAUTH2_CLIENT_ID`` and
``$KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET``, and ``~/.config/kfp/context.json``.

In multi-user Kubeflow every experiment lives in a profile namespace; the run and the recurring
run inherit it from their experiment, and the pipeline is uploaded into it (a private pipeline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from kfp import compiler

from components.contracts.errors import ParameterError, PipelineInputError

#: Environment variables with a bearer token and a session cookie for the KFP API (this command
#: reads them; ``kfp.Client`` reads the ``KF_PIPELINES_*`` ones itself).
TOKEN_ENV, COOKIES_ENV = "CAMPSEG_KFP_TOKEN", "CAMPSEG_KFP_COOKIES"
#: kfp.Client's own variable: a file holding a bearer token (e.g. a projected service-account token).
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
_FILTER_EQUALS = 1  # the v2beta1 filter operation EQUALS
_PAGE_SIZE = 100


def compile_package(pipeline_func: Callable, output: Path) -> Path:
    """Write the pipeline YAML that the KFP UI uploads and :func:`submit` sends."""
    compiler.Compiler().compile(pipeline_func, str(output))
    return Path(output)


def check_cron(expression: str) -> str:
    """Accept KFP's 6-field cron (leading seconds); explain a 5-field one."""
    fields = expression.split()
    if len(fields) == 5:
        raise ValueError(
            f"--schedule {expression!r} has 5 fields; KFP's cron has a leading seconds field: "
            f"use '0 {expression}' (for example '0 0 3 * * *' is daily at 03:00)"
        )
    if len(fields) != 6:
        raise ValueError(f"--schedule {expression!r}: expected 6 fields (seconds minutes hours day month weekday)")
    return expression


@dataclass(frozen=True)
class KfpAuth:
    """How the KFP client authenticates; :meth:`describe` names the route, never a value.

    Attributes:
        token: a bearer token (``kfp.Client(existing_token=...)``), e.g. an OIDC id token or
            ``kubectl create token``'s output.
        cookies: a ``Cookie`` header, e.g. ``oauth2_proxy_kubeflow=...`` of a logged-in browser.
        token_path: a file kfp re-reads for a bearer token (``$KF_PIPELINES_SA_TOKEN_PATH``).
        sources: where each came from (a flag or an environment variable), for :meth:`describe`.
    """

    token: str | None = field(default=None, repr=False)
    cookies: str | None = field(default=None, repr=False)
    token_path: str | None = None
    sources: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the user: which credentials are used, by their source only."""
        return ", ".join(self.sources) if self.sources else "none (kfp.Client's defaults)"


def kfp_auth(token: str | None = None, cookies: str | None = None,
             env: Mapping[str, str] | None = None) -> KfpAuth:
    """The credentials of the flags, else of the environment; a flag wins over its variable.

    A bearer token replaces ``$KF_PIPELINES_SA_TOKEN_PATH`` (kfp.Client uses one or the other);
    a cookie goes along with either.

    Raises:
        ParameterError: an empty token, or a cookie that is not ``NAME=VALUE[; NAME=VALUE]`` (the
            message names the flag or variable, never the value).
    """
    env = os.environ if env is None else env
    sources = []
    token_source = "--existing-token" if token is not None else f"${TOKEN_ENV}"
    token = token if token is not None else env.get(TOKEN_ENV)
    if token is not None:
        token = token.strip()
        if not token or any(c.isspace() for c in token):
            raise ParameterError(f"{token_source}: empty, or holds whitespace; expected one bearer token")
        sources.append(f"bearer token from {token_source}")
    cookie_source = "--cookies" if cookies is not None else f"${COOKIES_ENV}"
    cookies = cookies if cookies is not None else env.get(COOKIES_ENV)
    if cookies is not None:
        cookies = cookies.strip()
        pairs = [p.strip() for p in cookies.split(";") if p.strip()]
        if not pairs or any("=" not in p or p.startswith("=") for p in pairs) or "\n" in cookies:
            raise ParameterError(f"{cookie_source}: expected NAME=VALUE[; NAME=VALUE], e.g. the "
                                 "oauth2_proxy_kubeflow (or authservice_session) cookie of a logged-in browser")
        sources.append(f"session cookie from {cookie_source}")
    token_path = None if token else (env.get(TOKEN_PATH_ENV) or None)
    if token_path:
        if not Path(token_path).is_file():
            raise ParameterError(f"${TOKEN_PATH_ENV}={token_path}: no such file")
        sources.append(f"token file ${TOKEN_PATH_ENV}")
    return KfpAuth(token or None, cookies or None, token_path, tuple(sources))


def check_access(host: str | None, auth: KfpAuth, timeout: float = 10.0) -> None:
    """Refuse credentials the KFP endpoint rejects, in one sentence, before ``kfp.Client`` starts
    (which would retry its health check for half a minute and call the host unreachable).

    One ``GET /apis/v2beta1/healthz`` with ``auth``'s headers, redirects not followed: a 401 or
    403, or a redirect (the gateway's login page), is refused. Anything else, an unreachable host
    included, is left to ``kfp.Client``; without a host (in-cluster) nothing is checked.

    Raises:
        PipelineInputError: naming the host and the status, never a credential.
    """
    host = host or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not host or not host.startswith(("http://", "https://")):
        return
    import certifi
    import urllib3

    headers = {"Accept": "application/json"}
    token = auth.token or (Path(auth.token_path).read_text().strip() if auth.token_path else None)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if auth.cookies:
        headers["Cookie"] = auth.cookies
    try:
        answer = urllib3.PoolManager(ca_certs=certifi.where()).request(
            "GET", host.rstrip("/") + "/apis/v2beta1/healthz", headers=headers, redirect=False, retries=False,
            timeout=timeout)
    except urllib3.exceptions.HTTPError:
        return  # unreachable: kfp.Client says so
    routes = f"set ${TOKEN_ENV} or ${COOKIES_ENV} (or ${TOKEN_PATH_ENV}), see docs/cluster.md"
    if answer.status in (401, 403):
        text = answer.data.decode("utf-8", "replace").strip().splitlines()
        raise PipelineInputError(f"the KFP server at {host} refused the credentials ({answer.status} "
                                 f"{answer.reason}; used: {auth.describe()}): {text[0][:200] if text else ''}; "
                                 f"{routes}")
    if 300 <= answer.status < 400:
        raise PipelineInputError(f"the KFP endpoint {host} redirects to {answer.headers.get('Location', '?')} "
                                 f"(a login page): the request carried no valid credentials (used: "
                                 f"{auth.describe()}); {routes}")


def kfp_client(host: str | None, auth: KfpAuth = KfpAuth()):
    """A ``kfp.Client`` with ``auth``; the rest (endpoint, IAP/OAuth2) as kfp reads it itself.

    The profile namespace is not given here (kfp.Client's ``namespace`` is that of the KFP
    install, for its in-cluster address): :func:`submit` passes it to each call instead.
    """
    import kfp

    check_access(host, auth)
    credentials = None
    if auth.token_path:
        from kfp.client.set_volume_credentials import (
            ServiceAccountTokenVolumeCredentials,
        )

        credentials = ServiceAccountTokenVolumeCredentials(auth.token_path)
    return kfp.Client(host=host, existing_token=auth.token, cookies=auth.cookies, credentials=credentials)


@dataclass(frozen=True)
class Submitted:
    """What :func:`submit` created: a ``run`` or a ``recurring run``, its id and name, and the ids
    of the recurring runs of that name it replaced."""

    kind: str
    id: str
    name: str
    replaced: tuple[str, ...] = ()


def find_pipeline(client, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline called ``name`` (in ``namespace``, or the shared ones), or ``None``."""
    import json

    found = client.list_pipelines(page_size=2, namespace=namespace or None, filter=json.dumps(
        {"predicates": [{"operation": _FILTER_EQUALS, "key": "display_name", "stringValue": name}]}))
    pipelines = found.pipelines or []
    if len(pipelines) > 1:
        raise ValueError(f"several pipelines are called {name!r}{f' in {namespace}' if namespace else ''}")
    return pipelines[0].pipeline_id if pipelines else None


def recurring_runs_named(client, experiment_id: str, name: str) -> list:
    """Every recurring run called ``name`` in the experiment (all pages)."""
    import json

    flt = json.dumps({"predicates": [{"operation": _FILTER_EQUALS, "key": "display_name", "stringValue": name}]})
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(page_token=token, page_size=_PAGE_SIZE, experiment_id=experiment_id,
                                          filter=flt)
        found += [r for r in page.recurring_runs or [] if r.display_name == name]
        token = page.next_page_token or ""
        if not token:
            return found


def replace_recurring_runs(client, experiment_id: str, name: str, create: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Create a recurring run in place of those called ``name`` in the experiment.

    The old ones are disabled first, so two schedules of the same name never run side by side;
    then ``create()`` makes the new one; then the old ones are deleted. When ``create()`` fails,
    the ones that were enabled are enabled again and the error is raised: the schedule is never lost.

    Returns:
        What ``create()`` returned, and the ids of the replaced recurring runs.
    """
    old = recurring_runs_named(client, experiment_id, name)
    disabled = []
    try:
        for run in old:
            if str(run.status) != "DISABLED":
                client.disable_recurring_run(run.recurring_run_id)
                disabled.append(run.recurring_run_id)
        created = create()
    except Exception:
        for run_id in disabled:
            client.enable_recurring_run(run_id)
        raise
    for run in old:
        client.delete_recurring_run(run.recurring_run_id)
    return created, [run.recurring_run_id for run in old]


def submit(client, package: Path, pipeline_name: str, arguments: dict[str, Any], experiment: str,
           version_name: str, schedule: str | None = None, job_name: str | None = None,
           service_account: str | None = None, namespace: str | None = None) -> Submitted:
    """Upload ``package`` as a new version of the pipeline ``pipeline_name``; start a run or a schedule.

    Args:
        client: a ``kfp.Client`` (:func:`kfp_client`).
        package: the compiled pipeline YAML.
        pipeline_name: the pipeline's name on the server; created on the first submission.
        arguments: the run's parameters.
        experiment: the KFP experiment of the run (created when missing, in ``namespace``).
        version_name: the name of the new pipeline version.
        schedule: a 6-field cron: a recurring run (enabled, one at a time, no catch-up) instead of a
            run; it replaces the experiment's recurring runs of the same name
            (:func:`replace_recurring_runs`).
        job_name: the run's name (default: ``<pipeline_name>-<version_name>``; a recurring run's:
            ``pipeline_name``, so that submitting the schedule again replaces it).
        service_account: the Kubernetes service account of the run's pods.
        namespace: the Kubeflow profile namespace (multi-user); ``None`` for single-user KFP.
    """
    pipeline_id = find_pipeline(client, pipeline_name, namespace)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=pipeline_name, namespace=namespace or None,
                                          description="Camp segmentation training (campseg)")
        pipeline_id = pipeline.pipeline_id
    version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id)
    exp = client.create_experiment(experiment, namespace=namespace or None)
    if schedule:
        name = job_name or pipeline_name

        def create():
            return client.create_recurring_run(
                experiment_id=exp.experiment_id, job_name=name, cron_expression=check_cron(schedule),
                max_concurrency=1, no_catchup=True, enabled=True, params=arguments,
                pipeline_id=pipeline_id, version_id=version.pipeline_version_id, service_account=service_account,
            )

        created, replaced = replace_recurring_runs(client, exp.experiment_id, name, create)
        return Submitted("recurring run", created.recurring_run_id, name, tuple(replaced))
    name = job_name or f"{pipeline_name}-{version_name}"
    run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=name, params=arguments,
                              pipeline_id=pipeline_id, version_id=version.pipeline_version_id,
                              service_account=service_account)
    return Submitted("run", run.run_id, name)
