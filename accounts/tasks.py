from celery import shared_task

from accounts import services


@shared_task(name="accounts.tasks.export_build", autoretry_for=(OSError,), retry_backoff=True, max_retries=3)
def export_build_task(export_id: str) -> None:
    services.export_build(export_id=export_id)


@shared_task(name="accounts.tasks.purge_deleted_accounts")
def purge_deleted_accounts() -> int:
    return services.accounts_purge_due()


@shared_task(name="accounts.tasks.purge_expired_exports")
def purge_expired_exports() -> int:
    return services.exports_purge_expired()


@shared_task(name="accounts.tasks.purge_expired_sessions")
def purge_expired_sessions() -> int:
    return services.sessions_purge_expired()
