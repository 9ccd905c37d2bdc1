# Type stub for fastmta.kernels: the names it re-exports from the chosen backend.
# Both backends have the same API; the pure-Python twins carry the annotations.
from types import SimpleNamespace

from fastmta._pure.b64 import Base64DecodeError as Base64DecodeError
from fastmta._pure.b64 import Base64Decoder as Base64Decoder
from fastmta._pure.b64 import Base64Encoder as Base64Encoder
from fastmta._pure.b64 import b64_decode as b64_decode
from fastmta._pure.b64 import b64_encode as b64_encode
from fastmta._pure.datareader import DataReader as DataReader
from fastmta._pure.dotstuff import DotStuffer as DotStuffer
from fastmta._pure.dotstuff import dot_stuff as dot_stuff
from fastmta._pure.lines import LINE_BARE_CR as LINE_BARE_CR
from fastmta._pure.lines import LINE_BARE_LF as LINE_BARE_LF
from fastmta._pure.lines import LINE_NUL as LINE_NUL
from fastmta._pure.lines import LINE_OK as LINE_OK
from fastmta._pure.lines import LINE_TOO_LONG as LINE_TOO_LONG
from fastmta._pure.lines import LineSplitter as LineSplitter
from fastmta._pure.qp import QPDecoder as QPDecoder
from fastmta._pure.qp import QPEncoder as QPEncoder
from fastmta._pure.qp import qp_decode as qp_decode
from fastmta._pure.qp import qp_encode as qp_encode
from fastmta._pure.rfc2047 import DecodedHeader as DecodedHeader
from fastmta._pure.rfc2047 import decode_words as decode_words
from fastmta._pure.rfc2047 import encode_words as encode_words
from fastmta._pure.spoolio import COMMITTED as COMMITTED
from fastmta._pure.spoolio import IN_TMP as IN_TMP
from fastmta._pure.spoolio import NOT_CREATED as NOT_CREATED
from fastmta._pure.spoolio import PUBLISHED as PUBLISHED
from fastmta._pure.spoolio import commit_files as commit_files

KERNEL_MODULES: tuple[str, ...]
BACKEND: str
COMPILED_IMPORT_ERROR: str | None

def load_backend(name: str) -> SimpleNamespace: ...
