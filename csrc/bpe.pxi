# Byte-level BPE encoding (included by _core.pyx).
#
# ``ByteLevelBPE`` reproduces the HF tokenizers pipeline of Qwen2- and Llama 3-style tokenizers for
# text already split at added tokens and normalised (``fastsft.tokenizer.bpe`` does that part):
#
#     text ──split regex──▶ pieces ──UTF-8 bytes──▶ byte ids ──merges, lowest rank first──▶ ids
#
# * The split regex is ``(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}|
#   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`` (D = ``max_digits``: 1 for Qwen2, 3 for
#   Llama 3), matched by hand over UTF-8; ``char_classes[c]`` holds the class bits of code point
#   ``c`` as Oniguruma matches them (``fastsft.tokenizer.unicode_classes``).
# * A piece's bytes map one to one to ByteLevel's characters, so BPE runs on byte ids: merge the
#   adjacent pair of lowest rank (leftmost on a tie) until no pair is a merge, as HF's ``Word``
#   does. With ``ignore_merges`` (Llama 3) a piece that is a whole vocabulary entry is that entry.
# * ``encode_texts`` spreads a batch of at least ``_BYTES_PER_THREAD`` bytes per thread over up to
#   ``threads`` native threads, contiguous runs of texts of about equal size, without the GIL once
#   it has the texts' UTF-8 buffers. Each thread index has its own ``_State``: a cache of the ids of
#   every piece it has encoded (cleared past ``CACHE_MAX_WORDS``), kept from batch to batch, and the
#   BPE scratch. Calls on one instance take turns (a lock).

cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy
from libcpp.algorithm cimport make_heap, pop_heap, push_heap
from libcpp.vector cimport vector

import threading

cdef extern from *:
    void __builtin_prefetch(const void*) nogil

cdef extern from "<thread>" namespace "std" nogil:
    cdef cppclass thread:
        thread(void (*)(_Job*) noexcept nogil, _Job*) except +
        void join() except +

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    object PyUnicode_DecodeUTF8(const char*, Py_ssize_t, const char*)
    int PyUnicode_KIND(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    uint32_t PyUnicode_READ(int kind, void* data, Py_ssize_t i) nogil

# Class bits of ``char_classes``.
cdef enum:
    CLASS_LETTER = 1          # \p{L}
    CLASS_NUMBER = 2          # \p{N}
    CLASS_SPACE = 4           # \s
    CLASS_NEWLINE = 8         # \r or \n
    CLASS_FOLD_STMD = 16      # (?i:s), (?i:t), (?i:m) or (?i:d): a one-letter contraction
    CLASS_FOLD_RV = 32        # (?i:r) or (?i:v): first letter of 're / 've
    CLASS_FOLD_E = 64         # (?i:e)
    CLASS_FOLD_L = 128        # (?i:l)

#: Words cached per instance before the cache is cleared (bounds its memory on endless new words).
cdef enum:
    _CACHE_MAX_WORDS = 1 << 21
CACHE_MAX_WORDS = _CACHE_MAX_WORDS

cdef uint64_t NO_MERGE = <uint64_t>-1
# Token ids must be below this (20 bits each in a merge key).
cdef int32_t MAX_ID = 1 << 20
cdef enum:
    _GROUP = 32  # pieces looked up in the cache together (``_encode_text``)
# Pieces longer than this many bytes merge with a heap (``_bpe_long``) rather than by rescanning.
cdef Py_ssize_t _LONG_PIECE = 48
# A batch is spread over threads only when it has at least this many bytes per thread.
cdef Py_ssize_t _BYTES_PER_THREAD = 1 << 20


cdef inline uint64_t _mix(uint64_t key) noexcept nogil:
    key ^= key >> 33
    key *= 0xff51afd7ed558ccdULL
    key ^= key >> 33
    return key


cdef inline uint64_t _hash_bytes(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """A non-zero 64-bit hash of ``p[:n]``."""
    cdef uint64_t h = 0xcbf29ce484222325ULL ^ <uint64_t>n
    cdef uint64_t word
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        h = (h ^ word) * 0x100000001b3ULL
        h ^= h >> 29
        i += 8
    word = 0
    if i < n:
        memcpy(&word, p + i, n - i)
    h = (h ^ word) * 0x100000001b3ULL
    return _mix(h) | 1


cdef inline uint32_t _decode(const uint8_t* s, Py_ssize_t i, Py_ssize_t* width) noexcept nogil:
    """The code point at byte ``i`` of valid UTF-8, and its width in bytes."""
    cdef uint8_t b = s[i]
    if b < 0x80:
        width[0] = 1
        return b
    if b < 0xE0:
        width[0] = 2
        return ((b & 0x1F) << 6) | (s[i + 1] & 0x3F)
    if b < 0xF0:
        width[0] = 3
        return ((b & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F)
    width[0] = 4
    return ((b & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F)


cdef struct _Slot:
    uint64_t hash       # 0: empty
    int64_t entry       # offset of the entry in the arena


cdef struct _WordTable:
    # Open addressing over byte strings. An arena entry is ``int32 length, bytes, padding to 4,
    # int32 count, int32 ids[count]``: key and value in one place, one cache miss past the slot.
    vector[_Slot] slots
    uint64_t mask
    int64_t count
    vector[uint8_t] arena


cdef struct _State:
    # What one encoding thread changes: its piece cache and the BPE scratch (current ids, ranks of
    # adjacent pairs, and for long pieces, links and the heap).
    _WordTable cache
    vector[int32_t] symbols
    vector[uint64_t] ranks
    vector[int32_t] links
    vector[uint64_t] heap


cdef struct _Job:
    # One thread's share of ``encode_texts``: texts ``first_text .. last_text`` (their parts end at
    # ``text_ends``), encoded onto ``out``; ``ends[i]``: the end of text ``first_text + i`` in ``out``.
    void* encoder                       # the ByteLevelBPE (borrowed; the caller holds it)
    _State* state
    const uint8_t* const* starts        # per part: its UTF-8, or NULL for an added token's id
    const Py_ssize_t* lengths           # >= 0: a string part's length; < 0: -1 - added id
    const int* whole                    # a whole text, to split at added tokens
    const Py_ssize_t* text_ends
    Py_ssize_t first_text, last_text
    vector[int32_t] out
    vector[int64_t] ends


cdef void _table_reset(_WordTable* table, uint64_t capacity) noexcept nogil:
    cdef _Slot empty
    empty.hash = 0
    empty.entry = 0
    table.mask = capacity - 1
    table.slots.assign(capacity, empty)
    table.count = 0
    table.arena.clear()


cdef inline const int32_t* _entry_ids(_WordTable* table, int64_t entry, int32_t* count) noexcept nogil:
    """The ids stored at an arena entry, and their count."""
    cdef int32_t length
    memcpy(&length, &table.arena[entry], 4)
    cdef int64_t at = entry + 4 + ((length + 3) & ~3)
    memcpy(count, &table.arena[at], 4)
    return <const int32_t*>&table.arena[at + 4]


cdef int64_t _table_find(_WordTable* table, const uint8_t* p, Py_ssize_t n, uint64_t h) noexcept nogil:
    """The slot holding ``p[:n]``, or ``-1 - slot`` of the free slot where it would go."""
    cdef uint64_t slot = h & table.mask
    cdef _Slot* slots = table.slots.data()
    cdef int32_t length
    while True:
        if slots[slot].hash == 0:
            return -1 - <int64_t>slot
        if slots[slot].hash == h:
            memcpy(&length, &table.arena[slots[slot].entry], 4)
            if length == n and memcmp(&table.arena[slots[slot].entry + 4], p, n) == 0:
                return <int64_t>slot
        slot = (slot + 1) & table.mask


cdef void _table_grow(_WordTable* table) noexcept nogil:
    cdef vector[_Slot] old = table.slots
    cdef _Slot empty
    empty.hash = 0
    empty.entry = 0
    cdef uint64_t i, slot
    table.mask = table.mask * 2 + 1
    table.slots.assign(table.mask + 1, empty)
    for i in range(old.size()):
        if old[i].hash != 0:
            slot = old[i].hash & table.mask
            while table.slots[slot].hash != 0:
                slot = (slot + 1) & table.mask
            table.slots[slot] = old[i]


cdef void _table_insert(
    _WordTable* table, int64_t free, const uint8_t* p, Py_ssize_t n, uint64_t h, const int32_t* ids, Py_ssize_t k
) noexcept nogil:
    """Store ``ids[:k]`` for ``p[:n]`` in the free slot ``-1 - free`` (from ``_table_find``)."""
    cdef uint64_t slot = <uint64_t>(-1 - free)
    cdef int64_t entry = table.arena.size()
    cdef int64_t padded = (n + 3) & ~3
    cdef int32_t value = <int32_t>n
    table.arena.resize(entry + 4 + padded + 4 + 4 * k, 0)
    memcpy(&table.arena[entry], &value, 4)
    if n:
        memcpy(&table.arena[entry + 4], p, n)
    value = <int32_t>k
    memcpy(&table.arena[entry + 4 + padded], &value, 4)
    memcpy(&table.arena[entry + 8 + padded], ids, 4 * k)
    table.slots[slot].hash = h
    table.slots[slot].entry = entry
    table.count += 1
    if table.count * 2 > <int64_t>table.mask:
        _table_grow(table)


@cython.auto_pickle(False)  # holds C++ tables and a cache: ``ByteLevelBPEBackend`` pickles its tables
cdef class ByteLevelBPE:
    """Byte-level BPE over one tokenizer's tables; see the top of ``csrc/bpe.pxi``.

    ``char_classes``: ``uint8[0x110000]`` class bits per code point. ``merges``: ``int32[M, 3]``
    rows ``(left id, right id, merged id)`` in rank order (a later duplicate pair wins, as in HF).
    ``byte_ids``: ``int32[256]``, the id of each byte's ByteLevel character. ``whole_words``:
    ``(bytes blob, int64[W + 1] offsets, int32[W] ids)`` of the vocabulary, for ``ignore_merges``,
    or ``None``. ``added``: ``{content: id}`` of the added tokens split out of ``str`` texts.
    ``cache_max_words``: a thread's piece cache is cleared when it holds this many. ``threads``: the
    most threads a batch is spread over.
    """

    cdef object _char_classes_array
    cdef const uint8_t* _char_classes
    cdef vector[uint64_t] _merge_slots      # per slot: (left << 20 | right) + 1 << 24 | rank; 0: empty
    cdef vector[int32_t] _by_rank           # per rank: left, right, merged id
    cdef vector[uint32_t] _byte_pair_ranks  # rank of the merge of bytes (a, b) at a << 8 | b (NO_MERGE: all ones)
    cdef uint64_t _merge_mask
    cdef int32_t _byte_ids[256]
    cdef int _max_digits
    cdef bint _ignore_merges
    cdef _WordTable _whole_words
    cdef int64_t _cache_max_words
    cdef vector[_State] _states             # one per thread index
    cdef int _threads
    cdef object _lock
    # Added tokens as a byte trie: node k's children are _trie_bytes / _trie_children[_trie_first[k]
    # .. _trie_first[k + 1]]; _trie_token[k] is the id of the token ending there, or -1. Node 0 is
    # the root; _added_first[b]: some token starts with byte b.
    cdef vector[int32_t] _trie_first
    cdef vector[uint8_t] _trie_bytes
    cdef vector[int32_t] _trie_children
    cdef vector[int32_t] _trie_token
    cdef bint _added_first[256]

    def __init__(
        self,
        const uint8_t[::1] char_classes not None,
        const int32_t[:, ::1] merges not None,
        const int32_t[::1] byte_ids not None,
        int max_digits,
        whole_words=None,
        added=None,
        int64_t cache_max_words=_CACHE_MAX_WORDS,
        int threads=1,
    ):
        if char_classes.shape[0] != 0x110000:
            raise ValueError(f"char_classes must have 0x110000 entries, got {char_classes.shape[0]}")
        if merges.shape[1] != 3:
            raise ValueError(f"merges must have 3 columns, got {merges.shape[1]}")
        if byte_ids.shape[0] != 256:
            raise ValueError(f"byte_ids must have 256 entries, got {byte_ids.shape[0]}")
        if max_digits < 1:
            raise ValueError(f"max_digits must be at least 1, got {max_digits}")
        if cache_max_words < 1:
            raise ValueError(f"cache_max_words must be at least 1, got {cache_max_words}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._threads = threads
        self._lock = threading.Lock()
        self._cache_max_words = cache_max_words
        self._char_classes_array = char_classes.base if char_classes.base is not None else char_classes
        self._char_classes = &char_classes[0]
        cdef Py_ssize_t row, i
        for i in range(256):
            if not 0 <= byte_ids[i] < MAX_ID:
                raise ValueError(f"byte_ids[{i}] = {byte_ids[i]} is outside 0..{MAX_ID - 1}")
            self._byte_ids[i] = byte_ids[i]
        if merges.shape[0] >= (1 << 24):
            raise ValueError(f"at most {1 << 24} merges are supported, got {merges.shape[0]}")
        cdef uint64_t capacity = 16, key, slot
        while capacity < <uint64_t>(2 * merges.shape[0] + 2):
            capacity *= 2
        self._merge_slots.assign(capacity, 0)
        self._by_rank.assign(3 * merges.shape[0], 0)
        self._merge_mask = capacity - 1
        for row in range(merges.shape[0]):
            for i in range(3):
                if not 0 <= merges[row, i] < MAX_ID:
                    raise ValueError(f"merges row {row} has id {merges[row, i]} outside 0..{MAX_ID - 1}")
            key = (<uint64_t>merges[row, 0] << 20) | <uint64_t>merges[row, 1]
            slot = _mix(key) & self._merge_mask
            while self._merge_slots[slot] != 0 and (self._merge_slots[slot] >> 24) != key + 1:
                slot = (slot + 1) & self._merge_mask
            self._merge_slots[slot] = ((key + 1) << 24) | <uint64_t>row  # a later duplicate wins, as in HF
            for i in range(3):
                self._by_rank[3 * row + i] = merges[row, i]
        self._byte_pair_ranks.assign(65536, <uint32_t>NO_MERGE)
        for i in range(65536):
            key = self._rank(self._byte_ids[i >> 8], self._byte_ids[i & 255])
            if key != NO_MERGE:
                self._byte_pair_ranks[i] = <uint32_t>key
        self._max_digits = max_digits
        self._ignore_merges = whole_words is not None
        _table_reset(&self._whole_words, 16)
        if whole_words is not None:
            blob, offsets, ids = whole_words
            self._load_whole_words(blob, offsets, ids)
        self._load_added(added or {})

    cdef _load_added(self, dict added):
        """Added tokens (content -> id), split out of ``str`` texts leftmost-longest as HF does."""
        cdef list children = [{}]  # per node: byte -> child node
        cdef list tokens = [-1]
        cdef int node, b
        for content, token_id in added.items():
            if not 0 <= token_id < MAX_ID:
                raise ValueError(f"added token {content!r} has id {token_id} outside 0..{MAX_ID - 1}")
            node = 0
            for b in content.encode("utf-8"):
                if b not in children[node]:
                    children[node][b] = len(children)
                    children.append({})
                    tokens.append(-1)
                node = children[node][b]
            if node:
                tokens[node] = token_id
        for b in range(256):
            self._added_first[b] = b in children[0]
        for node in range(len(children)):
            self._trie_first.push_back(self._trie_bytes.size())
            self._trie_token.push_back(tokens[node])
            for b, child in sorted(children[node].items()):
                self._trie_bytes.push_back(b)
                self._trie_children.push_back(child)
        self._trie_first.push_back(self._trie_bytes.size())

    cdef Py_ssize_t _added_at(self, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, int32_t* token_id) noexcept nogil:
        """Length of the longest added token at ``s[i:]`` (its id in ``token_id``), or 0."""
        cdef int32_t node = 0, k, end
        cdef Py_ssize_t j = i, found = 0
        while j < n:
            k = self._trie_first[node]
            end = self._trie_first[node + 1]
            while k < end and self._trie_bytes[k] != s[j]:
                k += 1
            if k == end:
                break
            node = self._trie_children[k]
            j += 1
            if self._trie_token[node] >= 0:
                found = j - i
                token_id[0] = self._trie_token[node]
        return found

    cdef Py_ssize_t _next_added(
        self, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, int32_t* token_id, Py_ssize_t* length
    ) noexcept nogil:
        """Where the next added token at or after byte ``i`` starts (leftmost, then longest: its id in
        ``token_id``, its length in ``length``), or ``n`` with ``length`` 0."""
        while i < n:
            if self._added_first[s[i]]:
                length[0] = self._added_at(s, i, n, token_id)
                if length[0]:
                    return i
            i += 1
        length[0] = 0
        return n

    cdef void _encode_with_added(self, _State* st, const uint8_t* s, Py_ssize_t n, vector[int32_t]& out) noexcept nogil:
        """Split ``s[:n]`` at added tokens (``_next_added``) and encode the text between."""
        cdef Py_ssize_t start = 0, at, length
        cdef int32_t token_id
        if self._trie_children.empty():
            self._encode_text(st, s, n, out)
            return
        while start < n:
            at = self._next_added(s, start, n, &token_id, &length)
            if at > start:
                self._encode_text(st, s + start, at - start, out)
            if length:
                out.push_back(token_id)
            start = at + length

    def split_added(self, str text not None) -> list:
        """``text`` split at added tokens as ``encode_texts`` splits a ``str``: the text between them
        (``str``, never empty) and their ids (``int``), in order. For a caller that must treat the
        text between them apart (``fastsft.tokenizer.bpe`` normalises it)."""
        cdef Py_ssize_t n, start = 0, at, length
        cdef int32_t token_id
        cdef const uint8_t* s = <const uint8_t*>PyUnicode_AsUTF8AndSize(text, &n)
        cdef list parts = []
        while start < n:
            at = self._next_added(s, start, n, &token_id, &length)
            if at > start:
                parts.append(PyUnicode_DecodeUTF8(<const char*>s + start, at - start, NULL))
            if length:
                parts.append(token_id)
            start = at + length
        return parts

    cdef _load_whole_words(self, const uint8_t[::1] blob, const int64_t[::1] offsets, const int32_t[::1] ids):
        if offsets.shape[0] != ids.shape[0] + 1:
            raise ValueError("whole_words offsets must have one entry more than ids")
        cdef Py_ssize_t i
        cdef int64_t start, end
        cdef int64_t found
        cdef uint64_t h
        cdef const uint8_t* base = &blob[0] if blob.shape[0] else NULL
        for i in range(ids.shape[0]):
            start, end = offsets[i], offsets[i + 1]
            if not 0 <= start <= end <= blob.shape[0]:
                raise ValueError(f"whole_words offsets {start}..{end} are outside the blob")
            h = _hash_bytes(base + start, end - start)
            found = _table_find(&self._whole_words, base + start, end - start, h)
            if found < 0:
                _table_insert(&self._whole_words, found, base + start, end - start, h, &ids[i], 1)

    @property
    def cached_words(self) -> int:
        """How many distinct pieces the caches hold, over all threads."""
        cdef int64_t count = 0
        cdef size_t i
        for i in range(self._states.size()):
            count += self._states[i].cache.count
        return count

    cdef inline uint64_t _rank(self, int32_t left, int32_t right) noexcept nogil:
        """The rank of the pair's merge, or ``NO_MERGE``."""
        cdef uint64_t key = (<uint64_t>left << 20) | <uint64_t>right
        cdef uint64_t slot = _mix(key) & self._merge_mask
        cdef uint64_t found
        while True:
            found = self._merge_slots[slot]
            if (found >> 24) == key + 1:
                return found & <uint64_t>0xFFFFFF
            if found == 0:
                return NO_MERGE
            slot = (slot + 1) & self._merge_mask

    cdef inline uint64_t _byte_pair_rank(self, uint8_t left, uint8_t right) noexcept nogil:
        """``_rank`` of two bytes' ids, from a table small enough to stay in cache."""
        cdef uint32_t rank = self._byte_pair_ranks[(<uint32_t>left << 8) | right]
        return NO_MERGE if rank == <uint32_t>NO_MERGE else rank

    cdef void _bpe(self, _State* st, const uint8_t* p, Py_ssize_t n, vector[int32_t]& out) noexcept nogil:
        """Merge the piece's byte ids, lowest rank first (leftmost on a tie), onto ``out``."""
        if n > _LONG_PIECE:
            self._bpe_long(st, p, n, out)
            return
        cdef Py_ssize_t i, best, size = n
        cdef uint64_t best_rank
        st.symbols.resize(n)
        st.ranks.resize(n)
        cdef int32_t* symbols = st.symbols.data()
        cdef uint64_t* ranks = st.ranks.data()
        for i in range(n):
            symbols[i] = self._byte_ids[p[i]]
        for i in range(n - 1):
            ranks[i] = self._byte_pair_rank(p[i], p[i + 1])
        while size > 1:
            best_rank = NO_MERGE
            best = -1
            for i in range(size - 1):
                if ranks[i] < best_rank:
                    best_rank = ranks[i]
                    best = i
            if best < 0:
                break
            symbols[best] = self._by_rank[3 * best_rank + 2]
            for i in range(best + 1, size - 1):
                symbols[i] = symbols[i + 1]
                ranks[i] = ranks[i + 1]
            size -= 1
            if best > 0:
                ranks[best - 1] = self._rank(symbols[best - 1], symbols[best])
            if best < size - 1:
                ranks[best] = self._rank(symbols[best], symbols[best + 1])
        for i in range(size):
            out.push_back(symbols[i])

    cdef void _bpe_long(self, _State* st, const uint8_t* p, Py_ssize_t n, vector[int32_t]& out) noexcept nogil:
        """``_bpe`` in O(n log n) for long pieces (whole CJK sentences are one piece): a heap of
        candidate merges ``rank << 32 | position`` over a linked list of symbols, as HF's ``Word``
        merges; a popped candidate whose pair has changed since is skipped."""
        cdef Py_ssize_t i
        cdef int32_t position, right
        cdef uint64_t rank, top
        st.symbols.resize(n)
        st.links.resize(2 * n)
        st.heap.clear()
        cdef int32_t* symbols = st.symbols.data()
        cdef int32_t* links = st.links.data()  # links[2i]: previous, links[2i + 1]: next (-1: none)
        for i in range(n):
            symbols[i] = self._byte_ids[p[i]]
            links[2 * i] = <int32_t>i - 1
            links[2 * i + 1] = <int32_t>i + 1 if i + 1 < n else -1
        for i in range(n - 1):
            rank = self._byte_pair_rank(p[i], p[i + 1])
            if rank != NO_MERGE:
                st.heap.push_back(~((rank << 32) | <uint64_t>i))
        make_heap(st.heap.begin(), st.heap.end())
        while not st.heap.empty():
            top = ~st.heap.front()
            pop_heap(st.heap.begin(), st.heap.end())
            st.heap.pop_back()
            rank = top >> 32
            position = <int32_t><uint32_t>top
            right = links[2 * position + 1]
            # Stale when either symbol has changed since: a rank names one pair.
            if right < 0 or symbols[position] != self._by_rank[3 * rank] or symbols[right] != self._by_rank[3 * rank + 1]:
                continue
            symbols[position] = self._by_rank[3 * rank + 2]
            symbols[right] = -1
            links[2 * position + 1] = links[2 * right + 1]
            if links[2 * right + 1] >= 0:
                links[2 * links[2 * right + 1]] = position
            if links[2 * position] >= 0:
                rank = self._rank(symbols[links[2 * position]], symbols[position])
                if rank != NO_MERGE:
                    st.heap.push_back(~((rank << 32) | <uint64_t>links[2 * position]))
                    push_heap(st.heap.begin(), st.heap.end())
            if links[2 * position + 1] >= 0:
                rank = self._rank(symbols[position], symbols[links[2 * position + 1]])
                if rank != NO_MERGE:
                    st.heap.push_back(~((rank << 32) | <uint64_t>position))
                    push_heap(st.heap.begin(), st.heap.end())
        position = 0
        while position >= 0:
            out.push_back(symbols[position])
            position = links[2 * position + 1]

    cdef void _encode_piece(self, _State* st, const uint8_t* p, Py_ssize_t n, uint64_t h, vector[int32_t]& out) noexcept nogil:
        """Encode one piece, of hash ``h``, from the cache or by BPE (then cached)."""
        if n == 1:
            out.push_back(self._byte_ids[p[0]])
            return
        cdef int64_t slot = _table_find(&st.cache, p, n, h)
        cdef const int32_t* cached
        cdef int32_t count
        if slot >= 0:
            cached = _entry_ids(&st.cache, st.cache.slots[slot].entry, &count)
            out.insert(out.end(), cached, cached + count)
            return
        cdef size_t start = out.size()
        cdef int64_t whole = -1
        if self._ignore_merges:
            whole = _table_find(&self._whole_words, p, n, h)
        if whole >= 0:
            out.push_back(_entry_ids(&self._whole_words, self._whole_words.slots[whole].entry, &count)[0])
        else:
            self._bpe(st, p, n, out)
        if st.cache.count >= self._cache_max_words:
            _table_reset(&st.cache, 1 << 16)
            slot = _table_find(&st.cache, p, n, h)
        _table_insert(&st.cache, slot, p, n, h, &out[start], out.size() - start)

    cdef Py_ssize_t _piece_end(self, const uint8_t* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
        """The end of the regex's match at byte ``i`` of valid UTF-8 ``s[:n]``."""
        cdef const uint8_t* classes = self._char_classes
        cdef Py_ssize_t j, width, next_width, last_newline, last_start, digits
        cdef uint32_t c, c1
        cdef uint8_t k, k1, k2
        if True:
            c = _decode(s, i, &width)
            k = classes[c]
            j = -1
            # (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if c == 39 and i + 1 < n:
                c1 = _decode(s, i + 1, &next_width)
                k1 = classes[c1]
                if k1 & CLASS_FOLD_STMD:
                    j = i + 1 + next_width
                elif k1 & (CLASS_FOLD_RV | CLASS_FOLD_L) and i + 1 + next_width < n:
                    k2 = classes[_decode(s, i + 1 + next_width, &last_start)]
                    if (k1 & CLASS_FOLD_RV and k2 & CLASS_FOLD_E) or (k1 & CLASS_FOLD_L and k2 & CLASS_FOLD_L):
                        j = i + 1 + next_width + last_start
            if j >= 0:
                pass
            # [^\r\n\p{L}\p{N}]?\p{L}+
            elif k & CLASS_LETTER or (
                not k & (CLASS_NUMBER | CLASS_NEWLINE)
                and i + width < n
                and classes[_decode(s, i + width, &next_width)] & CLASS_LETTER
            ):
                j = i + width
                while j < n:
                    c = _decode(s, j, &next_width)
                    if not classes[c] & CLASS_LETTER:
                        break
                    j += next_width
            # \p{N}{1,max_digits}
            elif k & CLASS_NUMBER:
                j = i + width
                digits = 1
                while j < n and digits < self._max_digits:
                    c = _decode(s, j, &next_width)
                    if not classes[c] & CLASS_NUMBER:
                        break
                    j += next_width
                    digits += 1
            else:
                # ` ?[^\s\p{L}\p{N}]+[\r\n]*`
                j = i
                if c == 32 and i + 1 < n and not classes[_decode(s, i + 1, &next_width)] & (
                    CLASS_LETTER | CLASS_NUMBER | CLASS_SPACE
                ):
                    j = i + 1
                c = _decode(s, j, &next_width)
                if not classes[c] & (CLASS_LETTER | CLASS_NUMBER | CLASS_SPACE):
                    j += next_width
                    while j < n:
                        c = _decode(s, j, &next_width)
                        if classes[c] & (CLASS_LETTER | CLASS_NUMBER | CLASS_SPACE):
                            break
                        j += next_width
                    while j < n and (s[j] == 13 or s[j] == 10):
                        j += 1
                else:
                    # A whitespace run: `\s*[\r\n]+` ends after its last newline; else
                    # `\s+(?!\S)` leaves its last character to the piece after it; else `\s+`.
                    last_newline = -1
                    last_start = i
                    while j < n:
                        c = _decode(s, j, &next_width)
                        if not classes[c] & CLASS_SPACE:
                            break
                        if classes[c] & CLASS_NEWLINE:
                            last_newline = j
                        last_start = j
                        j += next_width
                    if last_newline >= 0:
                        j = last_newline + 1
                    elif j < n and last_start > i:
                        j = last_start
        return j

    cdef void _encode_text(self, _State* st, const uint8_t* s, Py_ssize_t n, vector[int32_t]& out) noexcept nogil:
        """Split valid UTF-8 ``s[:n]`` with the regex and encode each piece onto ``out``.

        Pieces go in groups of ``_GROUP``: their cache slots, then their cache entries, are
        prefetched before any is looked up, so that the cache misses overlap (the lookups are
        memory-bound)."""
        cdef Py_ssize_t i = 0, count, g
        cdef Py_ssize_t starts[_GROUP]
        cdef Py_ssize_t ends[_GROUP]
        cdef uint64_t hashes[_GROUP]
        cdef _Slot* slot
        while i < n:
            count = 0
            while i < n and count < _GROUP:
                starts[count] = i
                i = self._piece_end(s, i, n)
                ends[count] = i
                hashes[count] = _hash_bytes(s + starts[count], i - starts[count])
                __builtin_prefetch(&st.cache.slots[hashes[count] & st.cache.mask])
                count += 1
            for g in range(count):
                slot = &st.cache.slots[hashes[g] & st.cache.mask]
                if slot.hash == hashes[g]:
                    __builtin_prefetch(&st.cache.arena[slot.entry])
            for g in range(count):
                self._encode_piece(st, s + starts[g], ends[g] - starts[g], hashes[g], out)

    cdef void _encode_job(self, _Job* job) noexcept nogil:
        """Encode one job's texts onto its ``out``, with its thread's state."""
        cdef Py_ssize_t t, u = job.text_ends[job.first_text - 1] if job.first_text else 0
        for t in range(job.first_text, job.last_text):
            while u < job.text_ends[t]:
                if job.lengths[u] >= 0 and job.whole[u]:
                    self._encode_with_added(job.state, job.starts[u], job.lengths[u], job.out)
                elif job.lengths[u] >= 0:
                    self._encode_text(job.state, job.starts[u], job.lengths[u], job.out)
                else:
                    job.out.push_back(<int32_t>(-1 - job.lengths[u]))
                u += 1
            job.ends.push_back(job.out.size())

    def encode_texts(self, list texts not None):
        """Ids of each text as ``(int32[T], int64[len(texts) + 1] offsets)``.

        A text is a ``str`` (split at added tokens, then encoded), or a list of ``str`` and ``int``
        parts, already split and normalised (each ``str`` encoded as it is, an ``int`` emitted as an
        added token's id). Every ``str`` must be valid Unicode (no lone surrogates:
        ``UnicodeEncodeError``).
        """
        cdef vector[const uint8_t*] starts
        cdef vector[Py_ssize_t] lengths
        cdef vector[int] whole
        cdef vector[Py_ssize_t] text_ends     # per text, its end in starts / lengths
        cdef vector[Py_ssize_t] text_bytes    # per text, its bytes so far (the cumulative sum)
        cdef Py_ssize_t n, total = 0
        cdef const char* data
        for text in texts:
            if isinstance(text, str):
                data = PyUnicode_AsUTF8AndSize(text, &n)
                starts.push_back(<const uint8_t*>data)
                lengths.push_back(n)
                whole.push_back(True)
                total += n
            else:
                for part in text:
                    if isinstance(part, str):
                        data = PyUnicode_AsUTF8AndSize(part, &n)
                        starts.push_back(<const uint8_t*>data)
                        lengths.push_back(n)
                        whole.push_back(False)
                        total += n
                    else:
                        if part < 0:
                            raise ValueError(f"added token id {part} is negative")
                        starts.push_back(NULL)
                        lengths.push_back(-1 - <Py_ssize_t>part)
                        whole.push_back(False)
            text_ends.push_back(starts.size())
            text_bytes.push_back(total)
        cdef Py_ssize_t count = text_ends.size()
        cdef Py_ssize_t k, jobs = max(1, min(<Py_ssize_t>self._threads, total // _BYTES_PER_THREAD, count))
        cdef vector[_Job] work
        cdef vector[thread*] threads
        cdef _State empty
        with self._lock:
            while self._states.size() < <size_t>jobs:
                self._states.push_back(empty)
                _table_reset(&self._states.back().cache, 1 << 16)
            work.resize(jobs)
            for k in range(jobs):  # job k ends at the text where the running byte count reaches (k + 1) / jobs of the total
                work[k].encoder = <void*>self
                work[k].state = &self._states[k]
                work[k].starts = starts.data()
                work[k].lengths = lengths.data()
                work[k].whole = whole.data()
                work[k].text_ends = text_ends.data()
                work[k].first_text = work[k - 1].last_text if k else 0
                work[k].last_text = count if k == jobs - 1 else min(count, max(
                    work[k].first_text + 1, _first_at_least(text_bytes, total * (k + 1) // jobs) + 1
                ))
            try:
                with nogil:
                    for k in range(1, jobs):
                        threads.push_back(new thread(_run_job, &work[k]))
                    self._encode_job(&work[0])
            finally:  # every started thread is joined, also when starting one failed
                with nogil:
                    for k in range(<Py_ssize_t>threads.size()):
                        threads[k].join()
                        del threads[k]
        ids = np.empty(sum(work[k].out.size() for k in range(jobs)), dtype=np.int32)
        offsets = np.empty(count + 1, dtype=np.int64)
        cdef int32_t[::1] ids_view = ids
        cdef int64_t[::1] offsets_view = offsets
        cdef Py_ssize_t at = 0, t = 1, i
        offsets_view[0] = 0
        for k in range(jobs):
            if work[k].out.size():
                memcpy(&ids_view[at], work[k].out.data(), work[k].out.size() * sizeof(int32_t))
            for i in range(<Py_ssize_t>work[k].ends.size()):
                offsets_view[t] = at + work[k].ends[i]
                t += 1
            at += work[k].out.size()
        return ids, offsets


cdef Py_ssize_t _first_at_least(vector[Py_ssize_t]& values, Py_ssize_t target) noexcept nogil:
    """The first index of rising ``values`` whose value is at least ``target`` (its size if none)."""
    cdef Py_ssize_t low = 0, high = values.size(), middle
    while low < high:
        middle = (low + high) // 2
        if values[middle] < target:
            low = middle + 1
        else:
            high = middle
    return low


cdef void _run_job(_Job* job) noexcept nogil:
    """A thread's body: its share of ``encode_texts`` (the cast takes no reference, so no GIL)."""
    (<ByteLevelBPE>job.encoder)._encode_job(job)


def nfc_unchanged(str text not None, const uint8_t[::1] sensitive not None) -> bool:
    """Whether ``text`` has no code point ``c`` with ``sensitive[c]`` (NFC leaves such a text as it is)."""
    if sensitive.shape[0] != 0x110000:
        raise ValueError(f"sensitive must have 0x110000 entries, got {sensitive.shape[0]}")
    cdef int kind = PyUnicode_KIND(text)
    cdef void* data = PyUnicode_DATA(text)
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(text)
    for i in range(n):
        if sensitive[PyUnicode_READ(kind, data, i)]:
            return False
    return True
