"""
Pick up edits of config.json made while the server runs (by hand, or by
`medimage-tx pair`): checked every few seconds, applied without a
restart where the setting allows it (readProxy, webProxy, allowedTypes, ...);
the log says which changed keys wait for a restart.
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.logger import Logger

from .config import Config, ConfigError, config_stamp, config_warnings, load_config

CHECK_INTERVAL = 3.0

#: Keys read only when the server starts (listeners, folders, roles, TLS).
NEEDS_RESTART = {
    "listenPort", "httpsPort", "httpsKey", "httpsCert", "keepMaster", "fileMode",
    "onStartBackupDriveDetect", "allowPhotosLeaving", "allowGettingRemotePhotos", "lanMode",
    "discoveryPort", "requestRatePerAddress", "requestBurstPerAddress",
}


def changed_keys(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """
    The keys whose values differ, as (applied at once, waiting for a restart).
    Names only: values can be secrets (globalId).
    """
    changed = sorted(k for k in set(old.raw) | set(new.raw) if old.raw.get(k) != new.raw.get(k))
    return ([k for k in changed if k not in NEEDS_RESTART], [k for k in changed if k in NEEDS_RESTART])


class ConfigWatcher(TimerService):
    log = Logger()

    def __init__(self, state, interval: float = CHECK_INTERVAL):
        super().__init__(interval, self.check)
        self.state = state
        self._bad_stamp = None

    def startService(self) -> None:
        if self.state.config_stamp is None:
            self.state.config_stamp = config_stamp(self.state.config.path)
        super().startService()

    def check(self):
        stamp = config_stamp(self.state.config.path)
        if stamp is None or stamp in (self.state.config_stamp, self._bad_stamp):
            return None
        d = self.state.in_thread(load_config, self.state.config.path)
        d.addCallbacks(self._loaded, self._bad, errbackArgs=(stamp,))
        # Never let the timer die: TimerService stops for good on an error.
        d.addErrback(lambda f: self.log.failure("Checking config.json failed", f))
        return d

    def _loaded(self, config) -> None:
        applied, waiting = changed_keys(self.state.config, config)
        if waiting:
            self.log.warn(
                "config.json changed: restart the server to apply {waiting} (the old values stay in "
                "use until then){applied}",
                waiting=", ".join(waiting),
                applied=f"; applied now: {', '.join(applied)}" if applied else "")
        elif applied:
            self.log.info("config.json changed: applied now: {applied}", applied=", ".join(applied))
        old = self.state.config
        self.state.replace_config(config)
        return self.state.in_thread(lambda: (config_warnings(old), config_warnings(config))).addCallback(
            self._warn_new)

    def _warn_new(self, warnings) -> None:
        """
        A typo the edit brought in: one line, as at start (the home page
        says it too).
        """
        before, now = warnings
        for line in now:
            if line not in before:
                self.log.warn("{line}", line=line)

    def _bad(self, failure, stamp) -> None:
        failure.trap(ConfigError)
        self._bad_stamp = stamp
        self.log.warn("config.json was changed but cannot be used, keeping the running "
                      "settings: {error}", error=str(failure.value))
