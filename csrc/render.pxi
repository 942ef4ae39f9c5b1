# Included by _core.pyx: a raw ShareGPT row straight to segments, for the rows a plan covers.
#
# The one kernel here that works on Python objects (dicts and strings from orjson) rather than flat
# buffers, so it holds the GIL; what it saves is the interpreter's per-message overhead of
# ``convert`` and ``Template.render``. ``fastsft.kernels.reference.render_row`` is its
# specification, line for line.

cdef tuple _SMALL_INDICES = tuple(str(i) for i in range(256))


cdef inline str _index_text(Py_ssize_t i):
    return <str>_SMALL_INDICES[i] if i < 256 else str(i)


cdef void _emit(tuple parts, str content, object idx, list texts, list segment_texts, list special_ids):
    """``parts`` with ``{{content}}`` (then ``{{idx}}``) filled; empty text is left out."""
    cdef object part
    cdef str text
    for part in parts:
        if type(part) is tuple:
            text = (<str>(<tuple>part)[0]).replace("{{content}}", content, 1)
            if idx is not None:
                text = text.replace("{{idx}}", <str>idx, 1)
            if len(text) == 0:
                continue
            segment_texts.append(len(texts))
            texts.append(text)
        elif type(part) is str:
            segment_texts.append(len(texts))
            texts.append(part)
        else:
            segment_texts.append(-1)
            special_ids.append(part)


def render_row(object row, object plan_tuple, object out):
    """See ``fastsft.kernels.reference.render_row`` (``plan_tuple``: a ``RenderPlan``)."""
    if not isinstance(plan_tuple, tuple) or len(plan_tuple) != 14:
        raise TypeError(f"render_row: plan must be a RenderPlan, got {type(plan_tuple).__name__}")
    cdef tuple plan = <tuple>plan_tuple
    cdef str messages_column = plan[0]
    cdef str role_tag = plan[1]
    cdef str content_tag = plan[2]
    cdef object system_tag = plan[3]
    cdef object system_column = plan[4]
    cdef object tools_column = plan[5]
    cdef object kto_tag = plan[6]
    cdef tuple media_columns = plan[7]
    cdef dict prompt_roles = plan[8]
    cdef dict response_roles = plan[9]
    cdef tuple role_parts = plan[10]
    cdef tuple prefix = plan[11]
    cdef object system_parts = plan[12]
    cdef str default_system = plan[13]
    cdef dict raw
    cdef list messages, texts, segment_texts, special_ids, message_segments
    cdef object first, system, message, role, content, code, parts, column
    cdef Py_ssize_t offset = 0, count, turn, before
    cdef Py_ssize_t n_texts, n_segments, n_specials, n_messages

    if type(row) is not dict:
        return False
    raw = <dict>row
    messages_object = raw.get(messages_column)
    if type(messages_object) is not list:
        return False
    messages = <list>messages_object
    system = None
    if system_tag is not None and len(messages) != 0:
        first = messages[0]
        if type(first) is not dict or role_tag not in <dict>first:
            return False
        if (<dict>first)[role_tag] == system_tag:
            if content_tag not in <dict>first:
                return False
            offset = 1
            system = (<dict>first)[content_tag]
    if offset == 0 and system_column is not None:
        system = raw.get(system_column)
    count = len(messages) - offset
    if count == 0 or count % 2:
        return False
    if kto_tag is not None and type(raw.get(kto_tag)) is bool:
        return False
    for column in media_columns:
        if raw.get(column):
            return False
    if tools_column is not None and raw.get(tools_column):
        return False
    if not system:
        system = default_system
    elif type(system) is not str:
        return False
    if system and system_parts is None:
        return False

    texts = out.texts
    segment_texts = out.segment_texts
    special_ids = out.special_ids
    message_segments = out.message_segments
    n_texts, n_segments = len(texts), len(segment_texts)
    n_specials, n_messages = len(special_ids), len(message_segments)
    for turn in range(count):
        message = messages[offset + turn]
        if type(message) is not dict:
            break
        role = (<dict>message).get(role_tag)
        content = (<dict>message).get(content_tag)
        if type(role) is not str or type(content) is not str:
            break
        code = (response_roles if turn % 2 else prompt_roles).get(role)
        if code is None:
            break
        parts = role_parts[<Py_ssize_t>code]
        if parts is None:
            break
        before = len(segment_texts)
        if turn == 0:
            _emit(prefix, "", None, texts, segment_texts, special_ids)
            if system:
                _emit(<tuple>system_parts, <str>system, None, texts, segment_texts, special_ids)
        _emit(
            <tuple>parts,
            <str>content,
            _index_text(turn // 2) if code == 0 else None,
            texts,
            segment_texts,
            special_ids,
        )
        message_segments.append(len(segment_texts) - before)
    else:
        out.sample_messages.append(count)
        return True
    del texts[n_texts:]
    del segment_texts[n_segments:]
    del special_ids[n_specials:]
    del message_segments[n_messages:]
    return False
