"""Messages about jobs to where people read them: Apprise URLs (ntfy, Gotify,
Discord, Telegram, mail, ...), Apprise URL files and JSON webhooks.

    messages   what is said for done, failed and drained, as text and as JSON
    senders    one delivery to one target (Apprise, webhook), with a timeout
    channels   a target's thread: a bounded queue, retries with backoff
    dispatch   the owner (Notifications): job events in, messages out, one
               drained summary a batch

(URLs are shown masked by stemd.masking, which the config uses too.)
"""
