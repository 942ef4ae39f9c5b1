# Included by _core.pyx: finding the elements of a JSON array in a buffer, for streaming reads.

from libcpp.vector cimport vector

cdef enum:
    # Scanner states: where the scan resumes in the array's grammar.
    SCAN_OPEN = 0       # before the array's '['
    SCAN_FIRST = 1      # after '[': an element or ']'
    SCAN_ELEMENT = 2    # after ',': an element
    SCAN_SEPARATOR = 3  # after an element: ',' or ']'
    # Results.
    SCAN_MORE = 0       # the buffer ended; resume at pos (an incomplete element's start) with more bytes
    SCAN_CLOSED = 1     # the array's ']' ends at pos
    SCAN_INVALID = 2    # the byte at pos is not what the array's grammar allows there


cdef inline bint _json_space(unsigned char c) noexcept nogil:
    return c == 32 or c == 9 or c == 10 or c == 13


cdef Py_ssize_t _object_end(const unsigned char[::1] buf, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """End (exclusive) of the object starting at ``buf[i] == '{'``, or -1 when ``buf`` ends first.

    Counts ``{[`` against ``}]`` outside strings, skipping each escaped byte inside them; whether the
    object is valid JSON (brackets that match, values, commas) is left to the parser it goes to.
    """
    cdef Py_ssize_t depth = 0
    cdef unsigned char c
    while i < n:
        c = buf[i]
        if c == 34:  # '"': skip the string
            i += 1
            while i < n:
                c = buf[i]
                if c == 92:  # '\\': the next byte is escaped
                    i += 2
                elif c == 34:
                    break
                else:
                    i += 1
            if i >= n:
                return -1
        elif c == 123 or c == 91:
            depth += 1
        elif c == 125 or c == 93:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def scan_json_array(const unsigned char[::1] buf, Py_ssize_t pos, int state):
    """The complete elements of a JSON array found in ``buf`` from ``pos`` in scanner ``state``.

    Returns ``(spans, pos, state, status)``: ``spans`` is a list of ``(start, end)`` byte ranges,
    one per element, each an object (``{...}``) not yet checked by a parser; ``status`` is
    ``SCAN_MORE`` (resume at ``pos`` in ``state`` once more bytes are appended), ``SCAN_CLOSED``
    (``pos`` is just past the closing ``]``) or ``SCAN_INVALID`` (``buf[pos]`` breaks the array's
    grammar, or is an element that is not an object). Only JSON whitespace may separate tokens.
    """
    cdef Py_ssize_t n = buf.shape[0]
    cdef Py_ssize_t i = pos
    cdef Py_ssize_t end
    cdef int status = SCAN_MORE
    cdef unsigned char c
    cdef vector[Py_ssize_t] found
    if pos < 0 or pos > n or state < SCAN_OPEN or state > SCAN_SEPARATOR:
        raise ValueError(f"scan_json_array: pos {pos} or state {state} out of range")
    with nogil:
        while i < n:
            c = buf[i]
            if _json_space(c):
                i += 1
            elif state == SCAN_OPEN:
                if c != 91:
                    status = SCAN_INVALID
                    break
                state = SCAN_FIRST
                i += 1
            elif state == SCAN_SEPARATOR:
                if c == 44:  # ','
                    state = SCAN_ELEMENT
                    i += 1
                elif c == 93:  # ']'
                    status = SCAN_CLOSED
                    i += 1
                    break
                else:
                    status = SCAN_INVALID
                    break
            elif c == 123:  # '{': an element
                end = _object_end(buf, i, n)
                if end < 0:
                    break
                found.push_back(i)
                found.push_back(end)
                state = SCAN_SEPARATOR
                i = end
            elif c == 93 and state == SCAN_FIRST:  # '[]'
                status = SCAN_CLOSED
                i += 1
                break
            else:
                status = SCAN_INVALID
                break
    spans = [(found[k], found[k + 1]) for k in range(0, <Py_ssize_t>found.size(), 2)]
    return spans, i, state, status
