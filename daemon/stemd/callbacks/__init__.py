"""Callbacks: a job's JSON POSTed, signed, to the URL its submitter gave
(`callback_url` in the jobs API, /predict's parameters, a config rule) once
each time the job ends.

    urls      which URLs may be called: http(s), never link-local or a metadata
              address (checked at submission, at config load, and at each send)
    signing   X-Stemd-Timestamp and X-Stemd-Signature (HMAC-SHA256), the secret file
    sender    one POST within one deadline, to the address that was checked
    delivery  the owner (Callbacks): due callbacks from the ledger, sender
              threads, retries with backoff, a bounded stop

Not a kind of notification channel (stemd.notifications): a target there is
the operator's, configured once, and told about every job; a callback belongs
to one input, is stored with it in the ledger (so it outlives a restart and is
posted by one host of several), and is signed.
"""

from stemd.callbacks.urls import CallbackRefused, check_callback_url

__all__ = ["CallbackRefused", "check_callback_url"]
