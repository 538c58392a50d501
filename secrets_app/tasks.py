from celery import shared_task

from secrets_app import services


# acks_late + reject_on_worker_lost: a worker killed mid-rotation leaves the message to be delivered
# again, and the rerun picks up where the committed batches stopped.
@shared_task(name="secrets_app.tasks.rotate_master", acks_late=True, reject_on_worker_lost=True)
def rotate_master_task(rotation_id: str) -> None:
    services.master_key_rotation_run(rotation_id=rotation_id)
