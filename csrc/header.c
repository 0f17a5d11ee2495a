/*
 * dicomlake.dicom._native: a DICOM header walker that writes DICOM JSON (PS3.18 Annex F)
 * straight from the file's bytes, in one pass, without a Python object per element.
 *
 * Its output equals dicomlake.dicom.header.read_header (and so pydicom's
 * to_json_dict) for every file it accepts. Anything it does not reproduce exactly
 * (big endian, deflated, charsets beyond default/Latin-1/UTF-8, UN of undefined
 * length, ambiguous VRs pydicom cannot settle from the same data set, private VRs
 * pydicom's private dictionary leaves ambiguous, values pydicom would repair,
 * malformed or truncated input) raises Declined(reason), and the caller runs the
 * pydicom path.
 *
 * Elements that read_header hands to pydicom (UN, implicit private, implicit
 * ambiguous) are written as pydicom's to_json_dict writes them: the VR pydicom settles
 * on (hooks.raw_element_vr: dictionary VR for a public UN under 0xFFFF bytes, the
 * private dictionary through the data set's private creator, else UN), and pydicom's
 * bulk data threshold, which is on the base64 length.
 *
 * Safety: every read is checked against the buffer size before it happens; lengths
 * are compared as 64-bit sums; sequence nesting is bounded; UTF-8 values are
 * validated and Latin-1 values transcoded, so the JSON is always valid UTF-8.
 * Values that become BulkDataURIs are never touched (the buffer may be an mmap).
 *
 * The buffer may hold only the first bytes of a file of file_size bytes (a zip
 * member's or an object's prefix): then pixel data is measured against the file's
 * size (its value need not be held), and anything else that runs past the bytes held
 * is declined with "prefix", so that the caller reads more; never with another verdict
 * than the whole file would get.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vr_table.h"

#define MAX_DEPTH 64
#define UNDEFINED 0xFFFFFFFFu
#define TAG_ITEM 0xFFFEE000u
#define TAG_ITEM_DELIM 0xFFFEE00Du
#define TAG_SEQ_DELIM 0xFFFEE0DDu
#define TAG_CHARSET 0x00080005u
#define TAG_TSYNTAX 0x00020010u

enum { CODEC_LATIN1 = 0, CODEC_UTF8 = 1 };

static PyObject *Declined;          /* exception class */
static PyObject *json_loads;        /* orjson.loads, imported on first use */
static uint32_t *promoted_tags;     /* sorted */
static Py_ssize_t promoted_count;
static uint8_t vr_by_chars[26 * 26]; /* 'AA'..'ZZ' -> VR code, 255 = not a VR */

/* ------------------------------------------------------------------ buffers */

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

typedef struct {
    const uint8_t *d;
    size_t size;      /* the bytes held: the whole file, or its first bytes */
    size_t file_size; /* the file's size (>= size) */
    const char *uri;
    size_t uri_len;
    uint64_t threshold;
    int implicit;
    Buf out;
    Buf prom;
    int prom_n;
    const char *reason; /* set when declined */
    int pyerr;          /* set when a Python exception is pending */
    int has_pixel;
    int truncated_pixel;
    int pyd; /* the element being written goes through pydicom's to_json_dict */
} Parser;

/* What one data set (the top level, or a sequence item) has read so far that later
 * elements' VRs depend on, as pydicom looks it up in the same Dataset. */
enum { CREATOR_ABSENT = -1, CREATOR_UNDECIDED = -2 };
typedef struct {
    uint32_t group;      /* the odd group whose creators are in creator[]; 0 = none */
    int16_t creator[256]; /* (group,00bb): index into DL_PRIV_CREATORS, or CREATOR_* */
    int pixel_rep;       /* (0028,0103) as pydicom compares it: 0, 1, -1 = not usable */
} DsState;

static void ds_state_init(DsState *st) {
    st->group = 0;
    st->pixel_rep = -1;
}

#define DECLINE(p, r)          \
    do {                       \
        if (!(p)->reason)      \
            (p)->reason = (r); \
        return -1;             \
    } while (0)

/* Why the bytes ran out at end: the end of a prefix of the file (more must be read:
 * "prefix"), of the file itself ("truncated"), or of an element or item inside them. */
static const char *ran_out(const Parser *p, size_t end) {
    if (end != p->size)
        return "malformed";
    return p->size < p->file_size ? "prefix" : "truncated";
}

static int buf_reserve(Parser *p, Buf *b, size_t extra) {
    if (b->n + extra <= b->cap)
        return 0;
    if (extra > ((size_t)PY_SSIZE_T_MAX) / 2 - b->n) {
        PyErr_NoMemory();
        p->pyerr = 1;
        return -1;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + extra)
        cap *= 2;
    char *q = PyMem_Realloc(b->p, cap);
    if (!q) {
        PyErr_NoMemory();
        p->pyerr = 1;
        return -1;
    }
    b->p = q;
    b->cap = cap;
    return 0;
}

static inline int put(Parser *p, const char *s, size_t n) {
    if (buf_reserve(p, &p->out, n))
        return -1;
    memcpy(p->out.p + p->out.n, s, n);
    p->out.n += n;
    return 0;
}

#define PUTS(p, lit) put((p), (lit), sizeof(lit) - 1)

static inline int putc1(Parser *p, char c) {
    if (buf_reserve(p, &p->out, 1))
        return -1;
    p->out.p[p->out.n++] = c;
    return 0;
}

static inline uint16_t rd16(const uint8_t *s) { return (uint16_t)(s[0] | (s[1] << 8)); }
static inline uint32_t rd32(const uint8_t *s) {
    return (uint32_t)s[0] | ((uint32_t)s[1] << 8) | ((uint32_t)s[2] << 16) | ((uint32_t)s[3] << 24);
}
static inline uint32_t rdtag(const uint8_t *s) { return ((uint32_t)rd16(s) << 16) | rd16(s + 2); }

/* ------------------------------------------------------------ VR knowledge */

static const char HEX[] = "0123456789ABCDEF";

static int vr_code(uint8_t a, uint8_t b) {
    if (a < 'A' || a > 'Z' || b < 'A' || b > 'Z')
        return -1;
    uint8_t c = vr_by_chars[(a - 'A') * 26 + (b - 'A')];
    return c == 255 ? -1 : c;
}

static int is_long_vr(int vr) {
    switch (vr) {
    case DL_VR_OB: case DL_VR_OD: case DL_VR_OF: case DL_VR_OL: case DL_VR_OV: case DL_VR_OW:
    case DL_VR_SQ: case DL_VR_SV: case DL_VR_UC: case DL_VR_UN: case DL_VR_UR: case DL_VR_UT:
    case DL_VR_UV:
        return 1;
    default:
        return 0;
    }
}

static int is_binary_vr(int vr) {
    return vr == DL_VR_OB || vr == DL_VR_OD || vr == DL_VR_OF || vr == DL_VR_OL ||
           vr == DL_VR_OV || vr == DL_VR_OW;
}

/* Where ``tag`` is in the sorted ``tags``; ``n`` when it is not there. */
static size_t find_tag(const uint32_t *tags, size_t n, uint32_t tag) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (tags[mid] < tag)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && tags[lo] == tag ? lo : n;
}

/* pydicom.datadict.dictionary_VR: the main dictionary, then the repeater masks in
 * order; -2 = KeyError, DL_VR_AMBIGUOUS = several or none. */
static int dict_lookup(uint32_t tag) {
    size_t at = find_tag(DL_DICT_TAGS, DL_DICT_SIZE, tag);
    if (at < DL_DICT_SIZE)
        return DL_DICT_VRS[at];
    for (size_t i = 0; i < DL_REPEATER_SIZE; i++)
        if (((tag ^ DL_REPEATER_VALUE[i]) & DL_REPEATER_MASK[i]) == 0)
            return DL_REPEATER_VRS[i];
    return -2;
}

/* The dictionary VR, as dicomlake.dicom.json._implicit_vr: -1 = private, -2 = unknown,
 * DL_VR_AMBIGUOUS = several or none. */
static int dictionary_vr(uint32_t tag) {
    if ((tag >> 16) & 1)
        return -1;
    int v = dict_lookup(tag);
    return v == -2 && (tag & 0xFFFF) == 0 ? DL_VR_UL : v;
}

/* A private creator's value (pydicom: decoded, rstrip("\0 ")) -> its index in
 * DL_PRIV_CREATORS, CREATOR_ABSENT when the private dictionary does not know it, or
 * CREATOR_UNDECIDED where the decoding or the value's type could differ (bytes
 * outside printable ASCII, several values). */
static int creator_index(const uint8_t *s, size_t n) {
    while (n && (s[n - 1] == ' ' || s[n - 1] == 0))
        n--;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7E || s[i] == '\\')
            return CREATOR_UNDECIDED;
    size_t lo = 0, hi = DL_PRIV_CREATOR_COUNT;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *c = DL_PRIV_CREATORS[mid];
        size_t m = strlen(c);
        int r = memcmp(s, c, n < m ? n : m);
        if (r == 0)
            r = n < m ? -1 : n > m;
        if (r == 0)
            return (int)mid;
        if (r > 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return CREATOR_ABSENT;
}

/* pydicom.datadict.get_private_entry's VR: keys "ggggeeee", "ggggxxee", "ggxxxxee" in
 * that order; none = KeyError, which pydicom turns into UN. */
static int private_dict_vr(int creator, uint32_t tag) {
    char keys[3][8];
    for (int i = 0; i < 8; i++)
        keys[0][i] = HEX[(tag >> (28 - 4 * i)) & 0xF];
    memcpy(keys[1], keys[0], 8);
    keys[1][4] = keys[1][5] = 'x';
    memcpy(keys[2], keys[1], 8);
    keys[2][2] = keys[2][3] = 'x';
    for (int k = 0; k < 3; k++) {
        size_t lo = DL_PRIV_FIRST[creator], hi = DL_PRIV_FIRST[creator + 1];
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            int r = memcmp(DL_PRIV_KEYS[mid], keys[k], 8);
            if (r == 0)
                return DL_PRIV_VRS[mid];
            if (r < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
    }
    return DL_VR_UN;
}

/* hooks._private_vr_for_tag: LO for a private creator, the private dictionary's VR
 * through the creator in the same data set, else UN; -1 = undecided. */
static int private_vr(DsState *st, uint32_t tag) {
    uint32_t elem = tag & 0xFFFF;
    if (elem >= 0x0010 && elem <= 0x00FF)
        return DL_VR_LO;
    if (!(elem & 0xFF00))
        return DL_VR_UN;
    if (st->group != tag >> 16)
        return DL_VR_UN; /* no element of this group yet: no creator */
    int c = st->creator[elem >> 8];
    if (c == CREATOR_UNDECIDED)
        return -1;
    if (c == CREATOR_ABSENT)
        return DL_VR_UN;
    return private_dict_vr(c, tag);
}

/* The "US or SS" tags pydicom settles by Pixel Representation alone
 * (filewriter._AMBIGUOUS_US_SS_TAGS). The LUT descriptors are among them: pydicom's
 * value hook makes their first value unsigned, but read_header's JSON takes the values
 * as the settled VR reads them, and so does this parser (the differential corpus's
 * "lut-descriptors-implicit" case holds both Pixel Representations). */
static int is_us_ss_tag(uint32_t tag) {
    switch (tag) {
    case 0x00189810u: case 0x00221452u: case 0x00280104u: case 0x00280105u:
    case 0x00280106u: case 0x00280107u: case 0x00280108u: case 0x00280109u:
    case 0x00280110u: case 0x00280111u: case 0x00280120u: case 0x00280121u:
    case 0x00281101u: case 0x00281102u: case 0x00281103u: case 0x00283002u:
    case 0x00409211u: case 0x00409216u: case 0x00603004u: case 0x00603006u:
        return 1;
    default:
        return 0;
    }
}

static int is_promoted(uint32_t tag) {
    size_t n = (size_t)promoted_count;
    return promoted_tags != NULL && find_tag(promoted_tags, n, tag) < n;
}

/* --------------------------------------------------------- JSON primitives */

static int put_key(Parser *p, uint32_t tag) {
    char k[11];
    k[0] = '"';
    for (int i = 0; i < 8; i++)
        k[1 + i] = HEX[(tag >> (28 - 4 * i)) & 0xF];
    k[9] = '"';
    k[10] = ':';
    return put(p, k, 11);
}

static int put_vr(Parser *p, int vr) {
    char s[12] = "{\"vr\":\"XX\"";
    s[7] = DL_VR_NAMES[vr][0];
    s[8] = DL_VR_NAMES[vr][1];
    return put(p, s, 10);
}

/* One byte of a JSON string: quote, backslash and controls escaped, the rest as is. */
static inline char *put_json_byte(char *o, uint8_t c) {
    if (c == '"' || c == '\\') {
        *o++ = '\\';
        *o++ = (char)c;
    } else if (c < 0x20) {
        memcpy(o, "\\u00", 4);
        o[4] = HEX[c >> 4];
        o[5] = HEX[c & 0xF];
        o += 6;
    } else {
        *o++ = (char)c;
    }
    return o;
}

/* A JSON string of Latin-1 bytes (each byte is one code point). */
static int put_latin1(Parser *p, const uint8_t *s, size_t n) {
    if (buf_reserve(p, &p->out, n * 6 + 2))
        return -1;
    char *o = p->out.p + p->out.n;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c >= 0x80) {
            *o++ = (char)(0xC0 | (c >> 6));
            *o++ = (char)(0x80 | (c & 0x3F));
        } else {
            o = put_json_byte(o, c);
        }
    }
    *o++ = '"';
    p->out.n = (size_t)(o - p->out.p);
    return 0;
}

/* A JSON string of bytes already validated as UTF-8. */
static int put_utf8(Parser *p, const uint8_t *s, size_t n) {
    if (buf_reserve(p, &p->out, n * 6 + 2))
        return -1;
    char *o = p->out.p + p->out.n;
    *o++ = '"';
    for (size_t i = 0; i < n; i++)
        o = put_json_byte(o, s[i]);
    *o++ = '"';
    p->out.n = (size_t)(o - p->out.p);
    return 0;
}

static int put_text(Parser *p, const uint8_t *s, size_t n, int codec) {
    return codec == CODEC_UTF8 ? put_utf8(p, s, n) : put_latin1(p, s, n);
}

/* Strict UTF-8 as Python's decoder: no overlongs, surrogates or code points > U+10FFFF. */
static int valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else
            return 0;
        if (n - i <= need)
            return 0;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        i += need + 1;
    }
    return 1;
}

static int put_u64(Parser *p, uint64_t v) {
    char t[24];
    int k = 24;
    do {
        t[--k] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return put(p, t + k, (size_t)(24 - k));
}

static int put_i64(Parser *p, int64_t v) {
    if (v < 0) {
        if (putc1(p, '-'))
            return -1;
        return put_u64(p, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(p, (uint64_t)v);
}

/* Python's repr of a float; NaN and infinities are declined (not JSON). */
static int put_double(Parser *p, double v) {
    if (!isfinite(v))
        DECLINE(p, "nan");
    char *s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!s) {
        p->pyerr = 1;
        return -1;
    }
    int rc = put(p, s, strlen(s));
    PyMem_Free(s);
    return rc;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int put_base64(Parser *p, const uint8_t *s, size_t n) {
    size_t need = (n + 2) / 3 * 4 + 2;
    if (buf_reserve(p, &p->out, need))
        return -1;
    char *o = p->out.p + p->out.n;
    *o++ = '"';
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8) | s[i + 2];
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = B64[(v >> 6) & 63];
        *o++ = B64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8);
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = B64[(v >> 6) & 63];
        *o++ = '=';
    }
    *o++ = '"';
    p->out.n = (size_t)(o - p->out.p);
    return 0;
}

/* ------------------------------------------------------------ value rules */

/* Python's str.isspace() for a Latin-1 code point. */
static inline int py_space(uint8_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0;
}

static size_t rstrip_nul_space(const uint8_t *s, size_t n) {
    while (n && (s[n - 1] == ' ' || s[n - 1] == 0))
        n--;
    return n;
}

/* Binary VRs: inline base64, or a BulkDataURI over the threshold; never read then. */
static int emit_binary(Parser *p, int vr, size_t off, uint64_t len) {
    if (put_vr(p, vr))
        return -1;
    /* pydicom's to_json_dict: raw length > (T // 4) * 3 with T on the base64 length,
     * T = threshold * 4 // 3 + 4 (json.JsonConverter._pydicom_threshold) */
    uint64_t limit = p->threshold;
    if (p->pyd)
        limit = (limit + limit / 3 + 4) / 4 * 3;
    if (len > limit) {
        char num[64];
        if (PUTS(p, ",\"BulkDataURI\":"))
            return -1;
        /* the URI was escaped once at start-up into p->uri (JSON-safe, no quotes) */
        if (putc1(p, '"') || put(p, p->uri, p->uri_len))
            return -1;
        int k = snprintf(num, sizeof num, "?offset=%llu&length=%llu\"}", (unsigned long long)off,
                         (unsigned long long)len);
        return put(p, num, (size_t)k);
    }
    if (len == 0)
        return putc1(p, '}');
    if (off > p->size || len > p->size - off) /* only pixel data's length is not checked */
        DECLINE(p, "prefix");                 /* against the bytes held: it is in the file */
    if (PUTS(p, ",\"InlineBinary\":") || put_base64(p, p->d + off, (size_t)len))
        return -1;
    return putc1(p, '}');
}

static int emit_numbers(Parser *p, int vr, const uint8_t *s, size_t n) {
    size_t width;
    switch (vr) {
    case DL_VR_US: case DL_VR_SS: width = 2; break;
    case DL_VR_UL: case DL_VR_SL: case DL_VR_FL: width = 4; break;
    default: width = 8; break;
    }
    if (n % width)
        DECLINE(p, "value_repair");
    if (put_vr(p, vr) || PUTS(p, ",\"Value\":["))
        return -1;
    for (size_t i = 0; i < n; i += width) {
        if (i && putc1(p, ','))
            return -1;
        const uint8_t *q = s + i;
        int rc;
        switch (vr) {
        case DL_VR_US: rc = put_u64(p, rd16(q)); break;
        case DL_VR_SS: rc = put_i64(p, (int16_t)rd16(q)); break;
        case DL_VR_UL: rc = put_u64(p, rd32(q)); break;
        case DL_VR_SL: rc = put_i64(p, (int32_t)rd32(q)); break;
        case DL_VR_FL: {
            uint32_t u = rd32(q);
            float f;
            memcpy(&f, &u, 4);
            rc = put_double(p, (double)f);
            break;
        }
        default: {
            uint64_t u = (uint64_t)rd32(q) | ((uint64_t)rd32(q + 4) << 32);
            if (vr == DL_VR_FD) {
                double d;
                memcpy(&d, &u, 8);
                rc = put_double(p, d);
            } else if (vr == DL_VR_SV) {
                rc = put_i64(p, (int64_t)u);
            } else {
                rc = put_u64(p, u);
            }
        }
        }
        if (rc)
            return -1;
    }
    return PUTS(p, "]}");
}

/* DS and IS: only printable ASCII (and NUL) is handled here; pydicom's regexes. */
static int printable(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] && (s[i] < 0x20 || s[i] > 0x7E))
            return 0;
    return 1;
}

static inline int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }

/* \s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*  -> [*b, *e) the trimmed number */
static int ds_match(const uint8_t *s, size_t n, size_t *b, size_t *e) {
    size_t i = 0;
    while (i < n && s[i] == ' ')
        i++;
    *b = i;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        i++;
    size_t d0 = i;
    while (i < n && is_digit(s[i]))
        i++;
    if (i > d0) {
        if (i < n && s[i] == '.') {
            i++;
            while (i < n && is_digit(s[i]))
                i++;
        }
    } else {
        if (i >= n || s[i] != '.')
            return 0;
        i++;
        size_t f0 = i;
        while (i < n && is_digit(s[i]))
            i++;
        if (i == f0)
            return 0;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t x0 = i;
        while (i < n && is_digit(s[i]))
            i++;
        if (i == x0)
            return 0;
    }
    *e = i;
    while (i < n && s[i] == ' ')
        i++;
    return i == n;
}

static int all_spaces(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ')
            return 0;
    return 1;
}

/* One item of a DS or IS value: 1 when written, 0 when it is no number (an empty
 * item of a multi-valued element may still be null), -1 when it failed or declined. */
typedef int (*number_item)(Parser *p, const uint8_t *item, size_t len);

/* The backslash-separated items of a DS or IS value, as the JSON list after its VR. */
static int emit_text_numbers(Parser *p, const uint8_t *s, size_t n, int multi,
                             number_item put_item) {
    if (PUTS(p, ",\"Value\":["))
        return -1;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '\\')
            continue;
        const uint8_t *item = s + start;
        size_t len = i - start;
        if (start && putc1(p, ','))
            return -1;
        int m = put_item(p, item, len);
        if (m < 0)
            return -1;
        if (m == 0) {
            if (!multi || !all_spaces(item, len))
                DECLINE(p, "value_repair");
            if (p->pyd) /* pydicom cannot convert an empty item: read_header warns */
                DECLINE(p, "value_repair");
            if (PUTS(p, "null"))
                return -1;
        }
        start = i + 1;
    }
    return PUTS(p, "]}");
}

static int ds_item(Parser *p, const uint8_t *item, size_t len) {
    size_t b, e;
    char tmp[64];
    if (!ds_match(item, len, &b, &e))
        return 0;
    if (e - b >= sizeof tmp)
        DECLINE(p, "value_repair");
    memcpy(tmp, item + b, e - b);
    tmp[e - b] = 0;
    char *end = NULL;
    double v = PyOS_string_to_double(tmp, &end, NULL);
    if (end != tmp + (e - b)) {
        PyErr_Clear();
        DECLINE(p, "value_repair");
    }
    return put_double(p, v) ? -1 : 1;
}

static int emit_ds(Parser *p, const uint8_t *s, size_t n) {
    if (!printable(s, n))
        DECLINE(p, "value_repair");
    while (n && s[0] == ' ') { /* str.strip() */
        s++;
        n--;
    }
    while (n && s[n - 1] == ' ')
        n--;
    n = rstrip_nul_space(s, n);
    if (n == 0)
        return put_vr(p, DL_VR_DS) || putc1(p, '}') ? -1 : 0;
    int multi = memchr(s, '\\', n) != NULL;
    if (put_vr(p, DL_VR_DS))
        return -1;
    return emit_text_numbers(p, s, n, multi, ds_item);
}

/* \s*[+-]?\d+\s* with a 64-bit range check (Python's int is unbounded: decline). */
static int is_parse(const uint8_t *s, size_t n, int64_t *out) {
    size_t i = 0;
    while (i < n && s[i] == ' ')
        i++;
    int neg = 0;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    size_t d0 = i;
    uint64_t v = 0;
    while (i < n && is_digit(s[i])) {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
        i++;
    }
    if (i == d0)
        return 0;
    while (i < n && s[i] == ' ')
        i++;
    if (i != n)
        return 0;
    if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX)
        return -1;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

static int is_item(Parser *p, const uint8_t *item, size_t len) {
    int64_t v;
    int m = is_parse(item, len, &v);
    if (m < 0)
        DECLINE(p, "value_repair");
    if (m == 0)
        return 0;
    /* pydicom's IS refuses a value that float() does not hold exactly */
    if (p->pyd && (v > (INT64_C(1) << 53) || v < -(INT64_C(1) << 53)))
        DECLINE(p, "value_repair");
    return put_i64(p, v) ? -1 : 1;
}

static int emit_is(Parser *p, const uint8_t *s, size_t n) {
    if (!printable(s, n))
        DECLINE(p, "value_repair");
    n = rstrip_nul_space(s, n);
    int multi = memchr(s, '\\', n) != NULL;
    if (!multi && all_spaces(s, n))
        return put_vr(p, DL_VR_IS) || putc1(p, '}') ? -1 : 0;
    if (put_vr(p, DL_VR_IS))
        return -1;
    return emit_text_numbers(p, s, n, multi, is_item);
}

static int emit_pn(Parser *p, const uint8_t *s, size_t n, int codec) {
    n = rstrip_nul_space(s, n);
    if (n == 0)
        return put_vr(p, DL_VR_PN) || putc1(p, '}') ? -1 : 0;
    static const char *const names[3] = {"{\"Alphabetic\":", ",\"Ideographic\":", ",\"Phonetic\":"};
    if (put_vr(p, DL_VR_PN) || PUTS(p, ",\"Value\":["))
        return -1;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '\\')
            continue;
        if (start && putc1(p, ','))
            return -1;
        size_t g0 = start;
        int group = 0;
        for (size_t j = start; j <= i && group < 3; j++) {
            if (j < i && s[j] != '=')
                continue;
            if (put(p, names[group], strlen(names[group])) || put_text(p, s + g0, j - g0, codec))
                return -1;
            group++;
            g0 = j + 1;
        }
        if (putc1(p, '}'))
            return -1;
        start = i + 1;
    }
    return PUTS(p, "]}");
}

/* Every other string VR: split on backslash with each VR's strip rule. */
static int emit_strings(Parser *p, int vr, const uint8_t *s, size_t n, int codec) {
    int single = 0, trim = 0; /* trim: 0 none, 1 rstrip "\0 " per item, 2 strip(), 3 rstrip() */
    switch (vr) {
    case DL_VR_AS: case DL_VR_CS: case DL_VR_DA: case DL_VR_DT: case DL_VR_TM:
        codec = CODEC_LATIN1;
        n = rstrip_nul_space(s, n);
        break;
    case DL_VR_UI:
        codec = CODEC_LATIN1;
        n = rstrip_nul_space(s, n);
        break;
    case DL_VR_SH: case DL_VR_LO: case DL_VR_UC:
        trim = 1;
        break;
    case DL_VR_ST: case DL_VR_LT: case DL_VR_UT:
        single = 1;
        n = rstrip_nul_space(s, n);
        break;
    case DL_VR_AE:
        codec = CODEC_LATIN1;
        trim = 2;
        break;
    case DL_VR_UR:
        codec = CODEC_LATIN1;
        single = 1;
        while (n && py_space(s[n - 1]))
            n--;
        break;
    default:
        DECLINE(p, "vr");
    }
    /* one item that strips to nothing: an empty element */
    {
        const uint8_t *a = s;
        size_t m = n;
        if (!single && memchr(s, '\\', n))
            m = SIZE_MAX;
        else if (trim == 1)
            m = rstrip_nul_space(a, m);
        else if (trim == 2) {
            while (m && py_space(a[m - 1]))
                m--;
            while (m && py_space(a[0])) {
                a++;
                m--;
            }
        }
        if (m == 0)
            return put_vr(p, vr) || putc1(p, '}') ? -1 : 0;
    }
    if (put_vr(p, vr) || PUTS(p, ",\"Value\":["))
        return -1;
    if (single) {
        if (put_text(p, s, n, codec))
            return -1;
        return PUTS(p, "]}");
    }
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '\\')
            continue;
        const uint8_t *a = s + start;
        size_t m = i - start;
        if (trim == 1)
            m = rstrip_nul_space(a, m);
        else if (trim == 2) {
            while (m && py_space(a[m - 1]))
                m--;
            while (m && py_space(a[0])) {
                a++;
                m--;
            }
        }
        if (start && putc1(p, ','))
            return -1;
        if (put_text(p, a, m, codec))
            return -1;
        start = i + 1;
    }
    return PUTS(p, "]}");
}

static int emit_value(Parser *p, int vr, const uint8_t *s, size_t n, int codec) {
    if (n == 0)
        return put_vr(p, vr) || putc1(p, '}') ? -1 : 0;
    switch (vr) {
    case DL_VR_US: case DL_VR_SS: case DL_VR_UL: case DL_VR_SL: case DL_VR_FL: case DL_VR_FD:
    case DL_VR_UV: case DL_VR_SV:
        return emit_numbers(p, vr, s, n);
    case DL_VR_DS:
        return emit_ds(p, s, n);
    case DL_VR_IS:
        return emit_is(p, s, n);
    case DL_VR_AT: { /* pydicom: format(tag, "08X") per 4 bytes */
        if (n % 4)
            DECLINE(p, "value_repair");
        if (put_vr(p, vr) || PUTS(p, ",\"Value\":["))
            return -1;
        for (size_t i = 0; i < n; i += 4) {
            char k[11];
            uint32_t tag = rdtag(s + i);
            k[0] = ',';
            k[1] = '"';
            for (int j = 0; j < 8; j++)
                k[2 + j] = HEX[(tag >> (28 - 4 * j)) & 0xF];
            k[10] = '"';
            if (put(p, i ? k : k + 1, i ? 11 : 10))
                return -1;
        }
        return PUTS(p, "]}");
    }
    default:
        break;
    }
    int text = vr == DL_VR_SH || vr == DL_VR_LO || vr == DL_VR_UC || vr == DL_VR_ST ||
               vr == DL_VR_LT || vr == DL_VR_UT || vr == DL_VR_PN;
    if (text) {
        if (memchr(s, 0x1B, n)) /* ISO 2022 escape: pydicom switches charsets */
            DECLINE(p, "charset");
        if (codec == CODEC_UTF8 && !valid_utf8(s, n))
            DECLINE(p, "utf8");
    }
    if (vr == DL_VR_PN)
        return emit_pn(p, s, n, codec);
    return emit_strings(p, vr, s, n, codec);
}

/* (0008,0005): the codec json.charset_codec gives; -1 = not handled here. */
static int charset_codec(const uint8_t *s, size_t n) {
    while (n && (s[n - 1] == ' ' || s[n - 1] == 0))
        n--;
    while (n && (s[0] == ' ' || s[0] == 0)) {
        s++;
        n--;
    }
    if (n == 0 || (n == 8 && !memcmp(s, "ISO_IR 6", 8)) || (n == 10 && !memcmp(s, "ISO_IR 100", 10)))
        return CODEC_LATIN1;
    if (n == 10 && !memcmp(s, "ISO_IR 192", 10))
        return CODEC_UTF8;
    return -1;
}

/* ------------------------------------------------------------- structure */

enum { DS_ITEM = 0, DS_UNDEFINED_ITEM = 1, DS_TOP = 2 };
static int parse_dataset(Parser *p, size_t pos, size_t end, int mode, int codec, int depth,
                         size_t *next);

/* A sequence value at pos; limit bounds an undefined length. */
static int parse_sequence(Parser *p, size_t pos, uint32_t len, size_t limit, int codec, int depth,
                          size_t *next) {
    if (depth >= MAX_DEPTH)
        DECLINE(p, "too_deep");
    int undefined = len == UNDEFINED;
    size_t end = undefined ? limit : pos + len;
    if (PUTS(p, "{\"vr\":\"SQ\",\"Value\":["))
        return -1;
    int first = 1;
    for (;;) {
        if (!undefined && pos == end)
            break;
        if (end - pos < 8)
            DECLINE(p, end == p->size && p->size < p->file_size ? "prefix"
                       : pos == p->size                        ? "truncated"
                                                               : "malformed");
        uint32_t tag = rdtag(p->d + pos), ilen = rd32(p->d + pos + 4);
        pos += 8;
        if (tag == TAG_SEQ_DELIM) {
            if (!undefined || ilen != 0)
                DECLINE(p, "malformed");
            break;
        }
        if (tag != TAG_ITEM)
            DECLINE(p, "malformed");
        if (!first && putc1(p, ','))
            return -1;
        first = 0;
        /* filereader._is_implicit_vr: an item of an explicit VR data set whose first
         * element's VR bytes are not two capitals is read as implicit VR (PS3.5 6.2.2,
         * a UN sequence's items); items of implicit VR data sets never switch */
        int explicit = !p->implicit;
        if (explicit && p->size - pos >= 6) {
            const uint8_t *h = p->d + pos;
            p->implicit = !(h[4] >= 'A' && h[4] <= 'Z' && h[5] >= 'A' && h[5] <= 'Z');
        }
        size_t after;
        int rc;
        if (ilen == UNDEFINED) {
            rc = parse_dataset(p, pos, end, DS_UNDEFINED_ITEM, codec, depth + 1, &after);
        } else {
            if (ilen > end - pos)
                DECLINE(p, ran_out(p, end));
            rc = parse_dataset(p, pos, pos + ilen, DS_ITEM, codec, depth + 1, &after);
        }
        if (explicit)
            p->implicit = 0;
        if (rc)
            return -1;
        pos = after;
    }
    *next = pos;
    return PUTS(p, "]}");
}

/* One element's header at pos: its VR code, value offset and length, and in *pyd
 * whether read_header converts it with pydicom (hooks.raw_element_vr's VR). */
static int read_element(Parser *p, DsState *st, size_t pos, size_t end, uint32_t *tag, int *vr,
                        int *pyd, size_t *vpos, uint32_t *len) {
    const uint8_t *h = p->d + pos;
    *tag = rdtag(h);
    *pyd = 0;
    int private = (*tag >> 16) & 1;
    if (p->implicit) {
        *len = rd32(h + 4);
        *vpos = pos + 8;
        int v;
        if (private) {
            *pyd = 1;
            v = dict_lookup(*tag); /* pydicom asks the dictionary first (60xx, 50xx...) */
            if (v == -2) {
                if (*len == UNDEFINED) {
                    /* filereader: a private tag of undefined length is a sequence when
                     * an item follows; anything else is read as bytes (declined) */
                    if (end - *vpos < 4)
                        DECLINE(p, ran_out(p, end));
                    if (rdtag(p->d + *vpos) != TAG_ITEM)
                        DECLINE(p, "private_implicit");
                    *vr = DL_VR_SQ;
                    return 0;
                }
                v = private_vr(st, *tag);
                if (v < 0)
                    DECLINE(p, "private_implicit");
            }
            if (v == DL_VR_AMBIGUOUS || v == DL_VR_SQ)
                DECLINE(p, "private_implicit");
        } else {
            v = dictionary_vr(*tag);
            if (v == -2)
                DECLINE(p, "unknown_tag");
            if (v == DL_VR_AMBIGUOUS) {
                /* filewriter._correct_ambiguous_vr_element: US when the same data
                 * set's Pixel Representation is 0, else SS */
                if (!is_us_ss_tag(*tag) || st->pixel_rep < 0)
                    DECLINE(p, "ambiguous_vr");
                v = st->pixel_rep == 0 ? DL_VR_US : DL_VR_SS;
                *pyd = 1;
            }
            if (v == DL_VR_UN)
                *pyd = 1;
        }
        *vr = v;
        return 0;
    }
    int v = vr_code(h[4], h[5]);
    if (v < 0)
        DECLINE(p, "vr");
    if (is_long_vr(v)) {
        if (end - pos < 12)
            DECLINE(p, ran_out(p, end));
        *len = rd32(h + 8);
        *vpos = pos + 12;
    } else {
        *len = rd16(h + 6);
        *vpos = pos + 8;
    }
    if (v == DL_VR_UN && *len == UNDEFINED)
        v = DL_VR_SQ; /* filereader (infer_sq_for_un_vr): a sequence, PS3.5 6.2.2 */
    if (v == DL_VR_UN && *len != UNDEFINED) {
        /* hooks.raw_element_vr with replace_un_with_known_vr */
        *pyd = 1;
        /* a sequence this way (values.convert_SQ) is read as any explicit VR one: its
         * items switch to implicit VR when they look it (see parse_sequence) */
        if (private) {
            v = private_vr(st, *tag);
            if (v < 0 || v == DL_VR_AMBIGUOUS)
                DECLINE(p, "un");
        } else if (*len < 0xFFFF) {
            int d = dict_lookup(*tag);
            if (d == DL_VR_AMBIGUOUS)
                DECLINE(p, "un");
            if (d >= 0)
                v = d;
        }
    }
    *vr = v;
    return 0;
}

/* After an element of a data set: what later elements' VRs depend on. */
static void note_element(Parser *p, DsState *st, uint32_t tag, int vr, size_t vpos, uint32_t len) {
    uint32_t group = tag >> 16, elem = tag & 0xFFFF;
    if (tag == 0x00280103u)
        st->pixel_rep = p->implicit && vr == DL_VR_US && len == 2 ? rd16(p->d + vpos) != 0 : -1;
    if (!(group & 1))
        return;
    if (st->group != group) {
        st->group = group;
        memset(st->creator, 0xFF, sizeof st->creator); /* CREATOR_ABSENT */
    }
    if (elem > 0x00FF)
        return;
    int c = CREATOR_UNDECIDED;
    /* pydicom reads the creator as LO (explicit LO, explicit UN, implicit without a
     * dictionary entry), then looks its value up; anything else is left undecided */
    if (elem >= 0x0010 && vr == DL_VR_LO && len != UNDEFINED)
        c = creator_index(p->d + vpos, len);
    st->creator[elem] = (int16_t)c;
}

static int promote(Parser *p, uint32_t tag, size_t start) {
    if (!is_promoted(tag))
        return 0;
    size_t n = p->out.n - start;
    if (buf_reserve(p, &p->prom, n + 2))
        return -1;
    p->prom.p[p->prom.n++] = p->prom_n++ ? ',' : '{';
    memcpy(p->prom.p + p->prom.n, p->out.p + start, n);
    p->prom.n += n;
    return 0;
}

/* The element at pos (header already read); writes "KEY":{...} and sets *next. */
static int parse_element(Parser *p, uint32_t tag, int vr, int pyd, size_t vpos, uint32_t len,
                         size_t end, int codec, int depth, size_t *next) {
    size_t start = p->out.n;
    if (put_key(p, tag))
        return -1;
    if (vr == DL_VR_SQ) {
        if (len != UNDEFINED && len > end - vpos)
            DECLINE(p, ran_out(p, end));
        if (parse_sequence(p, vpos, len, end, codec, depth, next))
            return -1;
    } else {
        if (len == UNDEFINED)
            DECLINE(p, vr == DL_VR_UN ? "un" : "undefined_length");
        if (len > end - vpos)
            DECLINE(p, ran_out(p, end));
        p->pyd = pyd;
        int rc = is_binary_vr(vr) || vr == DL_VR_UN ? emit_binary(p, vr, vpos, len)
                                                    : emit_value(p, vr, p->d + vpos, len, codec);
        p->pyd = 0;
        if (rc)
            return -1;
        *next = vpos + len;
    }
    return depth == 0 ? promote(p, tag, start) : 0;
}

static int parse_pixel_data(Parser *p, size_t pos, uint32_t tag);

static int is_pixel_tag(uint32_t tag) {
    return tag == 0x7FE00010u || tag == 0x7FE00008u || tag == 0x7FE00009u;
}

/* A data set: a sequence item's [pos, end) or up to its delimiter, or the top level
 * (after the file meta: up to the end of the buffer or the pixel data). */
static int parse_dataset(Parser *p, size_t pos, size_t end, int mode, int codec, int depth,
                         size_t *next) {
    int inherited = codec, text_before_charset = 0;
    uint32_t last = 0;
    DsState st;
    ds_state_init(&st);
    int elements = 0;
    int comma = mode == DS_TOP ? p->out.n > 1 : 0;
    if (mode != DS_TOP && putc1(p, '{'))
        return -1;
    for (;;) {
        if (mode != DS_UNDEFINED_ITEM && pos == end) {
            if (mode == DS_TOP && p->size < p->file_size)
                DECLINE(p, "prefix"); /* the data set may go on past the bytes held */
            break;
        }
        if (end - pos < 8)
            DECLINE(p, ran_out(p, end));
        uint32_t tag = rdtag(p->d + pos);
        if (tag == TAG_ITEM_DELIM && mode == DS_UNDEFINED_ITEM) {
            if (rd32(p->d + pos + 4) != 0)
                DECLINE(p, "malformed");
            pos += 8;
            break;
        }
        if (mode == DS_TOP && is_pixel_tag(tag)) {
            if (!elements)
                DECLINE(p, "no_dataset");
            if (parse_pixel_data(p, pos, tag))
                return -1;
            break;
        }
        if ((tag >> 16) == 0xFFFE || (tag >> 16) <= 2)
            DECLINE(p, "malformed");
        if (elements && tag <= last)
            DECLINE(p, "order");
        int vr, pyd;
        size_t vpos;
        uint32_t len;
        if (read_element(p, &st, pos, end, &tag, &vr, &pyd, &vpos, &len))
            return -1;
        if (tag == TAG_CHARSET && len != UNDEFINED && len <= end - vpos) {
            int c = charset_codec(p->d + vpos, len);
            if (c < 0)
                DECLINE(p, "charset");
            if (text_before_charset && c != inherited)
                DECLINE(p, "charset_order");
            codec = c;
        } else if (tag < TAG_CHARSET) {
            text_before_charset = 1;
        }
        if ((elements || comma) && putc1(p, ','))
            return -1;
        if (parse_element(p, tag, vr, pyd, vpos, len, end, codec, depth, &pos))
            return -1;
        note_element(p, &st, tag, vr, vpos, len);
        elements++;
        last = tag;
    }
    if (mode == DS_TOP && !elements)
        DECLINE(p, "no_dataset");
    *next = pos;
    return mode == DS_TOP ? 0 : putc1(p, '}');
}

/* Top-level pixel data at pos, as header._pixel_element measures it. */
static int parse_pixel_data(Parser *p, size_t pos, uint32_t tag) {
    const uint8_t *h = p->d + pos;
    int vr = tag == 0x7FE00010u ? DL_VR_OW : tag == 0x7FE00008u ? DL_VR_OF : DL_VR_OD;
    int alpha = ((h[4] | 0x20) >= 'a' && (h[4] | 0x20) <= 'z') &&
                ((h[5] | 0x20) >= 'a' && (h[5] | 0x20) <= 'z');
    size_t off;
    uint64_t len;
    if (p->implicit || !alpha) {
        len = rd32(h + 4);
        off = pos + 8;
    } else {
        int v = vr_code(h[4], h[5]);
        if (v >= 0 && is_long_vr(v)) {
            if (p->size - pos < 12)
                DECLINE(p, ran_out(p, p->size));
            len = rd32(h + 8);
            off = pos + 12;
        } else {
            len = rd16(h + 6);
            off = pos + 8;
        }
        if (v >= 0 && is_binary_vr(v))
            vr = v;
    }
    int truncated = 0;
    if (len == UNDEFINED) {
        uint64_t q = off;
        for (;;) {
            if (q > p->file_size) /* a fragment runs past the end: read_header's length */
                DECLINE(p, "truncated"); /* would name bytes that are not there */
            if (p->file_size - q < 8) {
                truncated = 1;
                break;
            }
            if (q > p->size || p->size - q < 8) /* the next item is past the bytes held */
                DECLINE(p, "prefix");
            uint32_t t = rdtag(p->d + q), l = rd32(p->d + q + 4);
            if (t == TAG_SEQ_DELIM)
                break;
            if (t != TAG_ITEM || l == UNDEFINED)
                DECLINE(p, "malformed");
            q += 8 + (uint64_t)l;
        }
        len = q - off;
    } else if (p->file_size - off < len) {
        len = p->file_size - off;
        truncated = 1;
    }
    size_t start = p->out.n;
    if (putc1(p, ',') || put_key(p, tag))
        return -1;
    start++;
    if (emit_binary(p, vr, off, len))
        return -1;
    p->has_pixel = 1;
    p->truncated_pixel = truncated;
    return promote(p, tag, start);
}

static const char TS_IMPLICIT[] = "1.2.840.10008.1.2";
static const char TS_BIG[] = "1.2.840.10008.1.2.2";
static const char TS_DEFLATED[] = "1.2.840.10008.1.2.1.99";
static const char TS_DEFLATED_FRAMES[] = "1.2.840.10008.1.2.8.1";

static int ts_is(const uint8_t *s, size_t n, const char *uid) {
    return n == strlen(uid) && !memcmp(s, uid, n);
}

/* The whole file: preamble, file meta (explicit VR LE), then the data set. */
static int parse_file(Parser *p) {
    const uint8_t *d = p->d;
    if (p->size < 132 && p->size < p->file_size)
        DECLINE(p, "prefix");
    if (p->size < 132 || memcmp(d + 128, "DICM", 4))
        DECLINE(p, "no_preamble");
    size_t pos = 132, size = p->size;
    const uint8_t *ts = NULL;
    size_t ts_len = 0;
    uint32_t last = 0;
    int count = 0;
    if (putc1(p, '{'))
        return -1;
    p->implicit = 0;
    DsState st;
    ds_state_init(&st);
    while (size - pos >= 8 && rd16(d + pos) == 2) {
        uint32_t tag;
        int vr, pyd;
        size_t vpos;
        uint32_t len;
        if (read_element(p, &st, pos, size, &tag, &vr, &pyd, &vpos, &len))
            return -1;
        if (count && tag <= last)
            DECLINE(p, "order");
        if (tag == TAG_TSYNTAX && len != UNDEFINED && len <= size - vpos) {
            ts = d + vpos;
            ts_len = rstrip_nul_space(ts, len);
        }
        if (count && putc1(p, ','))
            return -1;
        if (parse_element(p, tag, vr, pyd, vpos, len, size, CODEC_LATIN1, 0, &pos))
            return -1;
        last = tag;
        count++;
    }
    if (size - pos < 8 && size < p->file_size)
        DECLINE(p, "prefix"); /* the file meta may go on past the bytes held */
    if (!ts || ts_len == 0 || memchr(ts, '\\', ts_len))
        DECLINE(p, "no_tsyntax");
    if (ts_is(ts, ts_len, TS_BIG))
        DECLINE(p, "big_endian");
    if (ts_is(ts, ts_len, TS_DEFLATED) || ts_is(ts, ts_len, TS_DEFLATED_FRAMES))
        DECLINE(p, "deflated");
    p->implicit = ts_is(ts, ts_len, TS_IMPLICIT);
    if (size - pos < 8)
        DECLINE(p, "truncated"); /* no data set, or a partial first element */
    if (rd16(d + pos) == 0)
        DECLINE(p, "command_set");
    /* pydicom checks the first element's VR bytes and may switch encodings */
    int upper = d[pos + 4] >= 'A' && d[pos + 4] <= 'Z' && d[pos + 5] >= 'A' && d[pos + 5] <= 'Z';
    if (p->implicit == upper)
        DECLINE(p, "vr_switch");
    size_t after;
    if (parse_dataset(p, pos, size, DS_TOP, CODEC_LATIN1, 0, &after))
        return -1;
    return putc1(p, '}');
}

/* ---------------------------------------------------------------- module */

static PyObject *get_json_loads(void) {
    if (json_loads)
        return json_loads;
    PyObject *mod = PyImport_ImportModule("orjson");
    if (!mod) {
        PyErr_Clear();
        mod = PyImport_ImportModule("json");
        if (!mod)
            return NULL;
    }
    json_loads = PyObject_GetAttrString(mod, "loads");
    Py_DECREF(mod);
    return json_loads;
}

/* The URI as it appears inside a JSON string (escaped, without the quotes). */
static int escape_uri(Parser *p, const char *uri, Py_ssize_t n, Buf *dst) {
    Buf saved = p->out;
    p->out = (Buf){0};
    int rc = put_utf8(p, (const uint8_t *)uri, (size_t)n);
    Buf escaped = p->out;
    p->out = saved;
    if (rc) {
        PyMem_Free(escaped.p);
        return -1;
    }
    memmove(escaped.p, escaped.p + 1, escaped.n - 2);
    escaped.n -= 2;
    *dst = escaped;
    return 0;
}

PyDoc_STRVAR(parse_doc,
"parse(buffer, uri, bulk_threshold, file_size=-1) -> (meta_json, has_pixel_data, warnings, promoted)\n\n"
"Parse a whole DICOM file held in ``buffer`` (bytes, or an mmap of the file) into\n"
"DICOM JSON. Raises Declined(reason) when the pydicom path must read it.\n\n"
"With ``file_size`` larger than the buffer, the buffer holds only the file's first\n"
"bytes: values past them that become BulkDataURIs are fine when the file holds them,\n"
"and a header that runs past them is declined with \"prefix\" (read more).");

static PyObject *native_parse(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"buffer", "uri", "bulk_threshold", "file_size", NULL};
    Py_buffer view;
    PyObject *uri_obj;
    Py_ssize_t threshold;
    Py_ssize_t file_size = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*Un|n:parse", kwlist, &view, &uri_obj,
                                     &threshold, &file_size))
        return NULL;
    PyObject *result = NULL;
    Parser p;
    memset(&p, 0, sizeof p);
    Buf uri = {0};
    if (threshold < 0) {
        PyErr_SetString(PyExc_ValueError, "bulk_threshold must be >= 0");
        goto done;
    }
    if (file_size >= 0 && file_size < view.len) {
        PyErr_SetString(PyExc_ValueError, "file_size must be at least the buffer's length");
        goto done;
    }
    Py_ssize_t uri_len;
    const char *uri_utf8 = PyUnicode_AsUTF8AndSize(uri_obj, &uri_len);
    if (!uri_utf8 || escape_uri(&p, uri_utf8, uri_len, &uri))
        goto done;
    p.d = view.buf;
    p.size = (size_t)view.len;
    p.file_size = file_size < 0 ? p.size : (size_t)file_size;
    p.uri = uri.p ? uri.p : "";
    p.uri_len = uri.n;
    p.threshold = (uint64_t)threshold;
    if (parse_file(&p)) {
        if (!p.pyerr && !PyErr_Occurred())
            PyErr_SetString(Declined, p.reason ? p.reason : "malformed");
        goto done;
    }
    PyObject *meta = PyUnicode_DecodeUTF8(p.out.p, (Py_ssize_t)p.out.n, "strict");
    if (!meta)
        goto done;
    PyObject *warnings = PyList_New(0);
    PyObject *promoted = NULL;
    if (warnings && p.truncated_pixel) {
        PyObject *w = PyUnicode_FromString("pixel data truncated: the file ends inside it");
        if (!w || PyList_Append(warnings, w)) {
            Py_XDECREF(w);
            Py_CLEAR(warnings);
        } else {
            Py_DECREF(w);
        }
    }
    if (warnings) {
        if (p.prom_n) {
            PyObject *loads = get_json_loads();
            PyObject *raw = NULL;
            if (loads && !buf_reserve(&p, &p.prom, 1)) {
                p.prom.p[p.prom.n++] = '}';
                raw = PyBytes_FromStringAndSize(p.prom.p, (Py_ssize_t)p.prom.n);
            }
            if (raw) {
                promoted = PyObject_CallOneArg(loads, raw);
                Py_DECREF(raw);
            }
        } else {
            promoted = PyDict_New();
        }
    }
    if (warnings && promoted)
        result = Py_BuildValue("(NONN)", meta, p.has_pixel ? Py_True : Py_False, warnings, promoted);
    else {
        Py_DECREF(meta);
        Py_XDECREF(warnings);
        Py_XDECREF(promoted);
    }
done:
    PyMem_Free(p.out.p);
    PyMem_Free(p.prom.p);
    PyMem_Free(uri.p);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(set_promoted_doc,
"set_promoted(tags) -> None\n\n"
"Set the top-level tags (ints, 0xGGGGEEEE) whose JSON parse() also returns as objects.");

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static PyObject *native_set_promoted(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "set_promoted() takes a sequence of int tags");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint32_t *tags = PyMem_Malloc(sizeof(uint32_t) * (size_t)(n ? n : 1));
    if (!tags) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred() || v > 0xFFFFFFFFul) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a tag is a 32-bit unsigned int");
            PyMem_Free(tags);
            Py_DECREF(seq);
            return NULL;
        }
        tags[i] = (uint32_t)v;
    }
    Py_DECREF(seq);
    qsort(tags, (size_t)n, sizeof(uint32_t), cmp_u32);
    PyMem_Free(promoted_tags);
    promoted_tags = tags;
    promoted_count = n;
    Py_RETURN_NONE;
}

static PyMethodDef native_methods[] = {
    {"parse", (PyCFunction)(void (*)(void))native_parse, METH_VARARGS | METH_KEYWORDS, parse_doc},
    {"set_promoted", native_set_promoted, METH_O, set_promoted_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "dicomlake.dicom._native",
    "Native DICOM header parser: DICOM JSON straight from the file's bytes.", -1, native_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    memset(vr_by_chars, 255, sizeof vr_by_chars);
    for (int i = 0; i < DL_VR_COUNT; i++)
        vr_by_chars[(DL_VR_NAMES[i][0] - 'A') * 26 + (DL_VR_NAMES[i][1] - 'A')] = (uint8_t)i;
    PyObject *m = PyModule_Create(&native_module);
    if (!m)
        return NULL;
    Declined = PyErr_NewExceptionWithDoc(
        "dicomlake.dicom._native.Declined",
        "The native parser does not handle this file exactly; args[0] is the reason.", NULL, NULL);
    if (!Declined || PyModule_AddObjectRef(m, "Declined", Declined) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "MAX_DEPTH", MAX_DEPTH);
    return m;
}
