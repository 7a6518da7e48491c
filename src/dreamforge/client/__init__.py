"""The Dream Forge Python client: every v1 endpoint, typed with the API's own pydantic models.

    from dreamforge.client import ApiStatusError, DreamForgeClient

    with DreamForgeClient("http://localhost:8001/v1") as df:
        job = df.create_job({"prompt": "a lighthouse at dawn", "width": 1024, "height": 1024})
        final = df.wait(job.job.id)                      # follows the SSE stream to the end
        for artifact in df.list_artifacts(job.job.id).artifacts:
            df.download_artifact(artifact, Path(f"{artifact.item_index}.png"))

It needs only httpx and pydantic (no torch), and is what the `dreamforge job` commands use.
"""

from dreamforge.api.schemas import (
    Artifact,
    ArtifactListResponse,
    ErrorResponse,
    HealthResponse,
    JobCreatedResponse,
    JobCreateRequest,
    JobStatus,
    JobStatusResponse,
    LogEvent,
    ModelDescriptor,
    ModelListResponse,
    ProgressResponse,
    ReadinessResponse,
    WebhookDelivery,
    WebhookDeliveryListResponse,
    WebhookPayload,
)
from dreamforge.client.errors import ApiStatusError, ApiUnreachable
from dreamforge.client.events import JobEvent
from dreamforge.client.sync import DEFAULT_API_BASE, DreamForgeClient, JobCreated

__all__ = [
    "DEFAULT_API_BASE",
    "ApiStatusError",
    "ApiUnreachable",
    "Artifact",
    "ArtifactListResponse",
    "DreamForgeClient",
    "ErrorResponse",
    "HealthResponse",
    "JobCreateRequest",
    "JobCreated",
    "JobCreatedResponse",
    "JobEvent",
    "JobStatus",
    "JobStatusResponse",
    "LogEvent",
    "ModelDescriptor",
    "ModelListResponse",
    "ProgressResponse",
    "ReadinessResponse",
    "WebhookDelivery",
    "WebhookDeliveryListResponse",
    "WebhookPayload",
]
