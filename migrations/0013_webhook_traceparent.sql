-- The W3C traceparent of the IngestEvent span that stored each inbox event, so the worker that
-- applies it later (another transaction, often another process) links its span to that trace.
-- NULL when the ingesting process exported no traces, and for events stored before this column.
-- Only the trace context is kept (version-trace id-span id-flags), never any baggage.
ALTER TABLE webhook_events
    ADD COLUMN traceparent text CHECK (char_length(traceparent) <= 128);
