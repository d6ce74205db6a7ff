# execgated in a container: `docker build -t execgate .` (docs/deploy.md, deploy/kubernetes/).
# The daemon is PID 1 and handles SIGTERM itself (drain, then stop its jobs); the exec form
# below starts it with no shell in between, so the signal reaches it.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# The commands the example policy allows; the daemon resolves argv[0] on a fixed PATH.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# A fixed uid, so Kubernetes' runAsUser and file ownership agree.
RUN groupadd --system --gid 10001 execgate \
    && useradd --system --uid 10001 --gid execgate --home-dir /var/lib/execgate \
       --shell /usr/sbin/nologin execgate \
    && install -d -o execgate -g execgate -m 0750 /var/lib/execgate /var/lib/execgate/workspace \
    && install -d -o root -g execgate -m 0750 /etc/execgate
COPY --chown=root:execgate --chmod=0640 policies/container.yaml /etc/execgate/policy.yaml
USER 10001:10001
WORKDIR /var/lib/execgate
EXPOSE 7878
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/execgated"]
CMD ["serve", "--config", "/etc/execgate/policy.yaml"]
