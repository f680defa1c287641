"""The HL7 v2 MDM EhrAdapter: render (builder), send over MLLP (mllp), judge the ACK.

ACK discipline (HL7 v2.5.1 ch. 2):
- only an ACK whose MSA-2 equals our MSH-10 counts (the client discards the others);
- AA, or CA in enhanced mode without a requested application ACK -> acknowledged:
  WriteOutcome(external_id=TXA-12, detail={"ack", "control_id", "event", ...});
- AE / CE -> PermanentError with the receiver's MSA-3/ERR text (vendor_code = ERR-3);
- AR / CR -> PermanentError, unless the receiver says to retry (ERR-7 `retry_after=N`, or
  "retry" in the text) -> TransientError(retry_after=N, maybe_delivered=False);
- no ACK in `timeout_s`, or the connection broke after sending (the message may have
  arrived): with `receiver_dedupes: true` resend the SAME bytes (same MSH-10 and TXA-12)
  up to `max_resends` times, then OutcomeUnknown; with `receiver_dedupes: false` a second
  copy could be filed twice, so OutcomeUnknown at once, nothing resent. Either way the
  ledger marks the write needs_reconciliation. A new control id is never made for a write.
`reconcile()`: MLLP has no look-up. If the receiver dedupes on MSH-10/TXA-12
(`receiver_dedupes: true`), resending is safe, so "not known to be there" (None) lets the
ledger resend the identical message; otherwise OutcomeUnknown (a person checks).
"""
from __future__ import annotations

import logging
import re
import ssl
from typing import Any

from chartbridge.core.errors import (ConfigError, InputError, OutcomeUnknown, PermanentError,
                                     TransientError)
from chartbridge.core.models import WriteCommand, WriteOutcome

from .builder import MdmSettings, Rendered, Vocabulary, build
from .config import Hl7MdmConfig
from .mllp import (Ack, AckTimeout, ConnectionLost, MllpClient, MllpFailure, NotConnected,
                   open_client)

log = logging.getLogger("chartbridge.adapters.hl7_mdm")

_RETRY = re.compile(r"retry[_ ]after[= ](\d+)", re.I)


class Hl7MdmAdapter:
    name = "hl7_mdm"

    def __init__(self, config: Hl7MdmConfig, vocab: Vocabulary, *, org_id: str = "",
                 ssl_context: ssl.SSLContext | None = None,
                 client: MllpClient | None = None) -> None:
        self.config = config
        self.vocab = vocab
        self.org_id = org_id
        self.settings = MdmSettings(
            sending_application=config.sending_application,
            sending_facility=config.sending_facility,
            receiving_application=config.receiving_application,
            receiving_facility=config.receiving_facility,
            processing_id=config.processing_id, obx_mode=config.obx_mode,
            value_type=config.value_type, ack_mode=config.ack_mode,
            accept_ack=config.accept_ack, application_ack=config.application_ack,
            patient_class=config.patient_class)
        self.client = client or open_client(config.host, config.port, ssl_context=ssl_context,
                                            connect_timeout=config.connect_timeout_s,
                                            connections=config.connections)

    def close(self) -> None:
        self.client.close()

    # -- port ----------------------------------------------------------------------------
    def render(self, command: WriteCommand) -> Rendered:
        try:
            return build(command, self.settings, self.vocab)
        except InputError as exc:
            # content the message cannot carry will not get better on a retry
            raise PermanentError(exc.message, vendor_code="invalid_content",
                                 field=exc.field) from None

    def send(self, command: WriteCommand) -> WriteOutcome:
        rendered = self.render(command)
        payload = rendered.er7.encode("utf-8")
        attempts = 1 + self.config.max_resends
        maybe_delivered = False
        last: MllpFailure | None = None
        for attempt in range(1, attempts + 1):
            try:
                ack = self.client.exchange(payload, rendered.control_id,
                                           timeout=self.config.timeout_s,
                                           accept=self._wanted_ack)
            except NotConnected as exc:
                last = exc
                if not maybe_delivered:
                    # nothing of this write has left us: an ordinary retry later
                    raise TransientError(exc.args[0], maybe_delivered=False) from None
                continue
            except (AckTimeout, ConnectionLost) as exc:
                maybe_delivered, last = True, exc
                if not self.config.receiver_dedupes:
                    log.warning("mdm: no acknowledgement; the receiver does not dedupe, so "
                                "nothing is resent", extra={"control_id": rendered.control_id,
                                                            "attempt": attempt,
                                                            "reason": type(exc).__name__})
                    raise OutcomeUnknown(
                        f"no acknowledgement for MSH-10 ({type(exc).__name__}) and this "
                        f"receiver does not dedupe on MSH-10/TXA-12, so it is not resent; "
                        f"check the EHR for the document, then resolve the write",
                        control_id=rendered.control_id,
                        document_number=rendered.document_number) from None
                log.warning("mdm: no acknowledgement; resending the same message",
                            extra={"control_id": rendered.control_id, "attempt": attempt,
                                   "reason": type(exc).__name__})
                continue
            return self._judge(ack, rendered, attempt)
        raise OutcomeUnknown(
            f"no acknowledgement for MSH-10 after {attempts} attempt(s) "
            f"({type(last).__name__}); the receiver may have filed the document",
            control_id=rendered.control_id, document_number=rendered.document_number)

    def reconcile(self, command: WriteCommand) -> WriteOutcome | None:
        if self.config.receiver_dedupes:
            return None        # the ledger resends the identical MSH-10/TXA-12: safe here
        raise OutcomeUnknown("MLLP has no look-up and this receiver does not dedupe on "
                             "MSH-10/TXA-12; check the EHR before resending")

    # -- ACKs ----------------------------------------------------------------------------
    def _wanted_ack(self, ack: Ack) -> bool:
        """In enhanced mode with an application ACK requested, a CA commit ACK is only a
        step: wait for the AA/AE/AR that follows on the same connection."""
        if self.config.ack_mode != "enhanced" or self.config.application_ack == "NE":
            return True
        return ack.code not in ("CA",)

    def _judge(self, ack: Ack, rendered: Rendered, attempt: int) -> WriteOutcome:
        code = ack.code
        detail: dict[str, Any] = {"ack": code, "control_id": rendered.control_id,
                                  "event": rendered.event}
        if attempt > 1:
            detail["attempts"] = attempt
        if code in ("AA", "CA"):
            if rendered.parent_document_number:
                detail["parent_document_number"] = rendered.parent_document_number
            return WriteOutcome(external_id=rendered.document_number, detail=detail)
        err_code = ack.component("ERR", 3, 1) or None
        location = ack.field("ERR", 2) or None
        text = ack.text("ERR", 8) or ack.text("MSA", 3) or "no reason given"
        text = text[:200]
        hint = " ".join([ack.text("ERR", 7), ack.text("ERR", 8), ack.text("MSA", 3)])
        if code in ("AR", "CR"):
            m = _RETRY.search(hint)
            if m or "retry" in hint.lower():
                raise TransientError(f"receiver rejected the message for now ({code}): {text}",
                                     retry_after=float(m.group(1)) if m else None,
                                     maybe_delivered=False, vendor_code=err_code,
                                     location=location)
            raise PermanentError(f"receiver rejected the message ({code}): {text}",
                                 vendor_code=err_code, location=location, ack=code)
        if code in ("AE", "CE"):
            raise PermanentError(f"receiver refused the message ({code}): {text}",
                                 vendor_code=err_code, location=location, ack=code)
        raise PermanentError("receiver answered with an unknown acknowledgement code",
                             vendor_code=code[:10] or None, ack=code[:10])


# -- factory ------------------------------------------------------------------------------
def client_ssl_context(tls) -> ssl.SSLContext | None:
    """TLS client context from the config's file refs (CA bundle, optional client cert)."""
    if not tls.enabled:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the MLLP TLS files ({type(exc).__name__})",
                          key="targets.hl7_mdm.tls") from None
    return ctx


def org_vocabulary(org_config: Any) -> Vocabulary:
    """TXA-2, OBX-3 and titles from the org's code tables (chartbridge.mappings)."""
    from chartbridge.mappings import note_type, section_table

    sections = section_table(org_config)

    def txa2(code: str | None) -> str:
        entry = note_type(org_config, code)
        if not entry.txa2:
            raise InputError("no TXA-2 mapping for this note type", field="note_type")
        return entry.txa2

    def obx3(code: str) -> tuple[str, str, str]:
        entry = sections.get(code)
        if entry.obx3 is None:
            return code, entry.title, "LN"
        return entry.obx3.code, entry.obx3.text, entry.obx3.system

    def nt(code: str | None) -> tuple[str, str]:
        entry = note_type(org_config, code)
        return entry.code, entry.name

    return Vocabulary(txa2=txa2, obx3=obx3, title=sections.title, note_type=nt)


def build_adapter(org_config: Any, target_config: Hl7MdmConfig, services: Any) -> Hl7MdmAdapter:
    org_id = getattr(org_config, "org", "") or ""
    return Hl7MdmAdapter(target_config, org_vocabulary(org_config), org_id=org_id,
                         ssl_context=client_ssl_context(target_config.tls))
