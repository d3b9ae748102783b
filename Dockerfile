# The one image every gendet Ray pod runs (cluster/*.yaml name it ghcr.io/your-org/gendet:<version>):
# Ray's own GPU image with gendet, its Ray pipelines and the s3/gcs storage backends installed.
#   docker build -t ghcr.io/your-org/gendet:0.8.0 . && docker push ghcr.io/your-org/gendet:0.8.0
# The base image cannot be pulled in this project's offline CI, so the image is not built by the tests;
# tests/cluster/test_manifests.py checks what can be checked without it: that the manifests' rayVersion
# and image tag match RAY_VERSION below and the package version, and that .dockerignore keeps what the
# COPY lines need.
# No secret is baked in: storage access comes from the pod's cloud role (IRSA / Workload Identity), the
# Ray token from the Secret KubeRay makes, MLflow settings from the ConfigMap / optional Secret.
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu
ARG RAY_VERSION

# Ray's images run as the unprivileged user `ray` (uid 1000, group users = 100) with a user-owned
# Python in /home/ray/anaconda3; the numeric USER lets Kubernetes check runAsNonRoot.
USER 1000:100
WORKDIR /home/ray/gendet

# Only what the install needs (see .dockerignore): the package metadata, then the code.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 gendet ./gendet
COPY --chown=1000:100 pipelines ./pipelines

# The image's Ray is kept as it is (the pin stops pip from replacing it): the cluster's Ray version is
# the image's, and KubeRay's rayVersion says so.
RUN pip install --no-cache-dir ".[ray,s3,gcs]" "ray==${RAY_VERSION}" \
    && python -c "import gendet, pipelines.extract, s3fs, gcsfs, ray; assert ray.__version__ == '${RAY_VERSION}'"

# Every Ray process started from this image uses token auth; KubeRay's authOptions supply the token
# (RAY_AUTH_TOKEN from a Secret). Without a token Ray refuses to start: it fails closed.
ENV RAY_AUTH_MODE=token \
    PYTHONUNBUFFERED=1
