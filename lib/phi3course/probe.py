"""What did the fine-tune cost? A general-knowledge probe, and replay data that keeps the model's world.

Fine-tuning a small model on a narrow set of facts teaches it those facts and, unless something stops
it, makes it answer *every* question with them ("The capital of France is Londis"): catastrophic
forgetting. Two tools, both pure functions of a model and its tokenizer, so a notebook cell and the
training job call the same code:

- :func:`probe_score` asks :data:`PROBE`, everyday questions written for the course (geography, science,
  history, arithmetic, language), and counts replies that contain an expected keyword. Score the base
  model and the tuned one: the drop is what the fine-tune forgot.
- :func:`replay_rows` has the *base* model answer :data:`REPLAY_PROMPTS` (a different set of everyday
  prompts: no question is shared with the probe) greedily, and returns the right ones (:data:`REPLAY_ANSWERS`)
  as chat rows. Mixed into the training data they teach the model to keep answering as it did
  (self-distillation: no hub, no extra data set needed).

What each lever did, over five training seeds, is in docs/measurements.md (``python -m benchmarks.forgetting``
measures it): :data:`REPLAY_ROWS` rows, fifteen of whose prompts are shaped like the facts, keep most of the
base model's score, and the result depends on the seed by several questions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .evaluate import GENERATION_BATCH, generate

# (question, keywords): a reply is right when it contains any keyword (case and spacing ignored).
# Written for the course; 7 questions the base SmolLM2-135M-Instruct got wrong with and without its default
# system prompt (largest country, largest planet, what bees make, herbivores, the first US president,
# 10 minus 3, the past tense of go) were dropped, so the probe measures what a fine-tune loses.
PROBE: tuple[tuple[str, tuple[str, ...]], ...] = (
    # geography
    ("What is the capital of France?", ("Paris",)),
    ("What is the capital of Japan?", ("Tokyo",)),
    ("What is the capital of Italy?", ("Rome",)),
    ("What is the capital of Germany?", ("Berlin",)),
    ("What is the capital of Spain?", ("Madrid",)),
    ("What is the capital of the United Kingdom?", ("London",)),
    ("What is the capital of Russia?", ("Moscow",)),
    ("What is the capital of Egypt?", ("Cairo",)),
    ("What is the capital of China?", ("Beijing",)),
    ("What is the capital of Canada?", ("Ottawa",)),
    ("Which ocean is the largest?", ("Pacific",)),
    ("What is the longest river in Africa?", ("Nile",)),
    ("What is the tallest mountain in the world?", ("Everest",)),
    ("On which continent is Brazil?", ("South America",)),
    ("Which country has the largest population in South America?", ("Brazil",)),
    ("In which country are the pyramids of Giza?", ("Egypt",)),
    ("Which is the largest desert in the world?", ("Sahara", "Antarctic")),
    ("In which city is the Eiffel Tower?", ("Paris",)),
    ("Which country is famous for kangaroos?", ("Australia",)),
    # science
    ("What is the chemical symbol for water?", ("H2O", "H₂O")),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "CO2", "CO₂")),
    ("What planet do we live on?", ("Earth",)),
    ("Which planet is known as the Red Planet?", ("Mars",)),
    ("What star is at the centre of our solar system?", ("Sun",)),
    ("At what temperature in Celsius does water boil at sea level?", ("100",)),
    ("At what temperature in Celsius does water freeze?", ("0", "zero")),
    ("What organ pumps blood around the body?", ("heart",)),
    ("What force keeps us on the ground?", ("gravity",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What is the chemical symbol for gold?", ("Au",)),
    ("What part of the plant makes food using sunlight?", ("leaf", "leaves", "chlorophyll", "chloroplast")),
    # history and people
    ("Who painted the Mona Lisa?", ("Leonardo", "da Vinci")),
    ("Who founded Microsoft?", ("Bill Gates", "Paul Allen")),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    ("Who developed the theory of relativity?", ("Einstein",)),
    ("Who was the first person to walk on the Moon?", ("Armstrong",)),
    ("Who discovered penicillin?", ("Fleming",)),
    ("In which year did World War II end?", ("1945",)),
    ("Which ship sank in 1912 after hitting an iceberg?", ("Titanic",)),
    ("Who invented the telephone?", ("Bell",)),
    ("Who wrote the theory of evolution by natural selection?", ("Darwin",)),
    # arithmetic
    ("What is 2 plus 2?", ("4", "four")),
    ("What is 5 times 5?", ("25", "twenty-five")),
    ("How many days are there in a week?", ("7", "seven")),
    ("How many months are there in a year?", ("12", "twelve")),
    ("How many minutes are in an hour?", ("60", "sixty")),
    ("How many sides does a triangle have?", ("3", "three")),
    # language
    ("What is the opposite of hot?", ("cold",)),
    ("What is the plural of mouse?", ("mice",)),
    ("What is the opposite of up?", ("down",)),
    ("What language is mainly spoken in Brazil?", ("Portuguese",)),
    ("What language is mainly spoken in Mexico?", ("Spanish",)),
    ("How do you say hello in Spanish?", ("hola",)),
)

# The probe's validation slice: everyday questions of the same kinds, none of them a PROBE question or a replay
# prompt, which 02 asks during training to pick its model (the PROBE itself is read once, at the end). Like the
# probe, only questions the base SmolLM2-135M-Instruct answers right (it answers all 39), so a drop is forgetting. 39,
# not fewer: with 16, 0.9 × base needed 15 right, and a run that kept the probe lost its check to one question.
VALIDATION_PROBE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of Sweden?", ("Stockholm",)),
    ("What is the capital of Poland?", ("Warsaw",)),
    ("In which country is the city of Rome?", ("Italy",)),
    ("What colour is the sky on a clear day?", ("blue",)),
    ("What do bees collect from flowers?", ("nectar", "pollen")),
    ("Who wrote the Odyssey?", ("Homer",)),
    ("Who wrote the Iliad?", ("Homer",)),
    ("What is 10 plus 10?", ("20", "twenty")),
    ("What is the opposite of night?", ("day",)),
    ("What is the opposite of wet?", ("dry",)),
    ("What is the opposite of early?", ("late",)),
    ("What is the plural of foot?", ("feet",)),
    ("What is the plural of tooth?", ("teeth",)),
    ("What language is mainly spoken in Germany?", ("German",)),
    ("What language is mainly spoken in Italy?", ("Italian",)),
    ("What language is mainly spoken in Japan?", ("Japanese",)),
    ("What is the capital of Mexico?", ("Mexico City",)),
    ("What is the capital of Thailand?", ("Bangkok",)),
    ("What is the capital of the Netherlands?", ("Amsterdam",)),
    ("What is the capital of Peru?", ("Lima",)),
    ("What is the capital of Ukraine?", ("Kyiv", "Kiev")),
    ("What is the capital of Switzerland?", ("Bern",)),
    ("What is the capital of Scotland?", ("Edinburgh",)),
    ("In which country is the city of Paris?", ("France",)),
    ("In which country is the city of Tokyo?", ("Japan",)),
    ("What language is mainly spoken in Spain?", ("Spanish",)),
    ("What language is mainly spoken in China?", ("Chinese", "Mandarin")),
    ("What language is mainly spoken in Russia?", ("Russian",)),
    ("What language is mainly spoken in Greece?", ("Greek",)),
    ("What is the opposite of happy?", ("sad", "unhappy")),
    ("What is the opposite of old?", ("young", "new")),
    ("What is the opposite of light?", ("dark", "heavy")),
    ("What is the opposite of open?", ("closed", "shut")),
    ("What is the opposite of left?", ("right",)),
    ("What is the plural of man?", ("men",)),
    ("What is the plural of woman?", ("women",)),
    ("What is 4 plus 4?", ("8", "eight")),
    ("How many days are in a week?", ("7", "seven")),
    ("How many legs does a dog have?", ("4", "four")),
)

# Everyday prompts for replay (self-distillation). None of them is a PROBE question (a test checks it),
# so the probe measures what the model kept, not what it rehearsed.
REPLAY_PROMPTS: tuple[str, ...] = (
    "What is the capital of Portugal?",
    "What is the capital of Greece?",
    "What is the capital of Australia?",
    "What is the capital of India?",
    "What is the capital of Kenya?",
    "What is the capital of Norway?",
    "Which is the smallest continent?",
    "Which river flows through London?",
    "What is the coldest continent?",
    "Which country is shaped like a boot?",
    "What is the chemical symbol for oxygen?",
    "What is the chemical symbol for iron?",
    "Which planet is closest to the Sun?",
    "How many planets are in our solar system?",
    "What gas do humans breathe out?",
    "What is the boiling point of water in Fahrenheit?",
    "What is the largest mammal?",
    "What is the fastest land animal?",
    "How many bones are in the adult human body?",
    "Who wrote Pride and Prejudice?",
    "Who painted The Starry Night?",
    "Who invented the light bulb?",
    "Who was Cleopatra?",
    "When did the First World War begin?",
    "Who was Napoleon Bonaparte?",
    "Who composed the Fifth Symphony?",
    "Who wrote Hamlet?",
    "Who built the Great Wall of China?",
    "What is 3 plus 4?",
    "What is 9 times 3?",
    "What is 20 divided by 4?",
    "What is 15 minus 6?",
    "How many hours are in a day?",
    "How many seconds are in a minute?",
    "How many sides does a square have?",
    "What is half of 50?",
    "What is the opposite of big?",
    "What is the plural of child?",
    "What is the past tense of eat?",
    "What is the opposite of fast?",
    "What language is spoken in France?",
    "How do you say thank you in French?",
    "What is your name?",
    "Who are you?",
    "Hello! How are you today?",
    # shaped like the facts (who leads / where is / when was / which animal stands for / what is it known for),
    # about the real world: they keep the fine-tune from answering every such question with an institute's fact
    "Who founded Apple?",
    "Who invented the printing press?",
    "Who is in charge of a ship?",
    "Who leads an orchestra?",
    "Where is the Louvre museum located?",
    "In which city is the Colosseum?",
    "In which country is the Taj Mahal?",
    "In which year did the Berlin Wall fall?",
    "When was the Declaration of Independence signed?",
    "What is the national animal of Scotland?",
    "Which animal is the symbol of the WWF?",
    "What is NASA best known for?",
    "Who discovered radium?",
    "Where is Mount Fuji?",
    "Who built the first successful airplane?",
    # beyond the default 60
    "Can you help me write a short thank-you note to a friend?",
    "Give me three tips for sleeping better.",
    "What should I pack for a day at the beach?",
    "How do I make a cup of tea?",
    "Suggest a name for a pet dog.",
    "What is a healthy breakfast?",
    "Explain what a computer is in one sentence.",
    "What is the internet?",
    "Tell me a fun fact about octopuses.",
    "What are the three primary colours?",
    "How many colours are in a rainbow?",
    "What is the freezing point of water in Fahrenheit?",
    "What do caterpillars turn into?",
    "What is the capital of Argentina?",
    "Who is the author of Harry Potter?",
    "What is the largest organ of the human body?",
    "What is the currency of Japan?",
    "Which instrument has 88 keys?",
    "What is the longest river in South America?",
    "What do you call a baby cat?",
    "Which mountain range separates Europe and Asia?",
    "Name a country in Scandinavia.",
    "Which sea lies between Europe and Africa?",
    "What is the hardest natural substance?",
    "Which organ do we use to breathe?",
    "What is the main gas in the air we breathe?",
    "Why is the sky blue?",
    "What causes rain?",
    "What is photosynthesis?",
    "What is an atom?",
    "What was the Renaissance?",
    "What is a synonym for happy?",
    "What is a noun?",
    "What is a verb?",
    "Give me a word that rhymes with cat.",
)


# What a right answer to a replay prompt contains (any keyword, as the probe checks): the base model's answer is
# replayed only when it is right. A small model answers some of these wrongly or rambles past the answer ("To find 3
# plus 4, we can start by adding 3 to 4. This is a classic example ..."); replayed, such answers taught the fine-tune
# to ramble and to err on the probe's neighbouring questions that the base model had got right. Prompts without an
# entry (chat, advice) have no single right answer and are replayed as answered.
REPLAY_ANSWERS: dict[str, tuple[str, ...]] = {
    "What is the capital of Portugal?": ("Lisbon",),
    "What is the capital of Greece?": ("Athens",),
    "What is the capital of Australia?": ("Canberra",),
    "What is the capital of India?": ("New Delhi", "Delhi"),
    "What is the capital of Kenya?": ("Nairobi",),
    "What is the capital of Norway?": ("Oslo",),
    "Which is the smallest continent?": ("Australia", "Oceania"),
    "Which river flows through London?": ("Thames",),
    "What is the coldest continent?": ("Antarctica",),
    "Which country is shaped like a boot?": ("Italy",),
    "What is the chemical symbol for oxygen?": ("O",),
    "What is the chemical symbol for iron?": ("Fe",),
    "Which planet is closest to the Sun?": ("Mercury",),
    "How many planets are in our solar system?": ("eight", "8"),
    "What gas do humans breathe out?": ("carbon dioxide", "CO2", "CO₂"),
    "What is the boiling point of water in Fahrenheit?": ("212",),
    "What is the largest mammal?": ("blue whale",),
    "What is the fastest land animal?": ("cheetah",),
    "How many bones are in the adult human body?": ("206",),
    "Who wrote Pride and Prejudice?": ("Austen",),
    "Who painted The Starry Night?": ("van Gogh", "Gogh"),
    "Who invented the light bulb?": ("Edison", "Swan"),
    "Who was Cleopatra?": ("Egypt",),
    "When did the First World War begin?": ("1914",),
    "Who was Napoleon Bonaparte?": ("French", "France", "emperor"),
    "Who composed the Fifth Symphony?": ("Beethoven",),
    "Who wrote Hamlet?": ("Shakespeare",),
    "Who built the Great Wall of China?": ("Chinese", "China", "Qin", "Ming", "dynasty", "dynasties"),
    "What is 3 plus 4?": ("7", "seven"),
    "What is 9 times 3?": ("27", "twenty-seven"),
    "What is 20 divided by 4?": ("5", "five"),
    "What is 15 minus 6?": ("9", "nine"),
    "How many hours are in a day?": ("24", "twenty-four"),
    "How many seconds are in a minute?": ("60", "sixty"),
    "How many sides does a square have?": ("4", "four"),
    "What is half of 50?": ("25", "twenty-five"),
    "What is the opposite of big?": ("small", "little"),
    "What is the plural of child?": ("children",),
    "What is the past tense of eat?": ("ate",),
    "What is the opposite of fast?": ("slow",),
    "What language is spoken in France?": ("French",),
    "How do you say thank you in French?": ("merci",),
    "Who founded Apple?": ("Jobs", "Wozniak"),
    "Who invented the printing press?": ("Gutenberg",),
    "Who is in charge of a ship?": ("captain",),
    "Who leads an orchestra?": ("conductor",),
    "Where is the Louvre museum located?": ("Paris",),
    "In which city is the Colosseum?": ("Rome",),
    "In which country is the Taj Mahal?": ("India",),
    "In which year did the Berlin Wall fall?": ("1989",),
    "When was the Declaration of Independence signed?": ("1776",),
    "What is the national animal of Scotland?": ("unicorn",),
    "Which animal is the symbol of the WWF?": ("panda",),
    "What is NASA best known for?": ("space", "Moon", "Apollo"),
    "Who discovered radium?": ("Curie",),
    "Where is Mount Fuji?": ("Japan",),
    "Who built the first successful airplane?": ("Wright",),
    "What are the three primary colours?": ("red",),
    "How many colours are in a rainbow?": ("seven", "7"),
    "What is the freezing point of water in Fahrenheit?": ("32",),
    "What do caterpillars turn into?": ("butterfly", "butterflies", "moth"),
    "What is the capital of Argentina?": ("Buenos Aires",),
    "Who is the author of Harry Potter?": ("Rowling",),
    "What is the largest organ of the human body?": ("skin",),
    "What is the currency of Japan?": ("yen",),
    "Which instrument has 88 keys?": ("piano",),
    "What is the longest river in South America?": ("Amazon",),
    "What do you call a baby cat?": ("kitten",),
    "Which mountain range separates Europe and Asia?": ("Ural",),
    "Name a country in Scandinavia.": ("Norway", "Sweden", "Denmark"),
    "Which sea lies between Europe and Africa?": ("Mediterranean",),
    "What is the hardest natural substance?": ("diamond",),
    "Which organ do we use to breathe?": ("lungs", "lung"),
    "What is the main gas in the air we breathe?": ("nitrogen",),
    "What is a synonym for happy?": ("glad", "joyful", "cheerful", "content", "pleased", "delighted", "merry"),
    "Give me a word that rhymes with cat.": ("hat", "bat", "mat", "rat", "sat", "fat", "pat", "flat", "chat"),
}

REPLAY_ROWS = 60  # replay prompts mixed into the local profile's 160 fact rows (what it keeps: docs/measurements.md)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def keyword_match(reply: str, keywords: Sequence[str]) -> bool:
    """A probe reply is right when it contains one of the keywords as a word (so "4" is not found in "14")."""
    text = _normal(reply)
    for keyword in keywords:
        word = _normal(keyword)
        if re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", text):
            return True
    return False


def probe_score(
    model: Any,
    tokenizer: Any,
    questions: Sequence[tuple[str, Sequence[str]]] = PROBE,
    max_new_tokens: int = 32,
    batch_size: int = GENERATION_BATCH,
    desc: str | None = "general probe",
) -> tuple[float, list[dict[str, Any]]]:
    """(fraction right, rows): greedy replies to the probe's questions, each checked for its keywords."""
    prompts = [[{"role": "user", "content": question}] for question, _ in questions]
    replies = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc)
    rows = [
        {
            "question": question,
            "expected": " / ".join(keywords),
            "reply": reply,
            "correct": keyword_match(reply, keywords),
        }
        for (question, keywords), reply in zip(questions, replies, strict=True)
    ]
    return round(sum(row["correct"] for row in rows) / max(len(rows), 1), 4), rows


def _whole_sentences(text: str) -> str:
    """A reply cut at the token limit, trimmed back to its last complete sentence (if it has one)."""
    text = text.strip()
    if text.endswith((".", "!", "?")):
        return text
    ends = [m.end() for m in re.finditer(r"[.!?](\s|$)", text)]
    return text[: ends[-1]].strip() if ends else text


def _degenerate(text: str, n: int = 3, times: int = 3) -> bool:
    """A reply stuck in a loop: some run of ``n`` words comes back ``times`` times or more."""
    words = text.lower().split()
    grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return any(grams.count(gram) >= times for gram in set(grams))


def _first_sentence(text: str) -> str:
    """The reply's first sentence (a line break ends one too)."""
    return re.split(r"(?<=[.!?])\s+|\n+", text.strip(), maxsplit=1)[0].strip()


def replay_rows(
    model: Any,
    tokenizer: Any,
    n: int | None = REPLAY_ROWS,
    prompts: Sequence[str] = REPLAY_PROMPTS,
    max_new_tokens: int = 48,
    batch_size: int = GENERATION_BATCH,
    answers: dict[str, tuple[str, ...]] = REPLAY_ANSWERS,
) -> list[dict[str, Any]]:
    """The base model's own greedy answers to the first ``n`` replay prompts (all when ``None``) as chat rows.

    Mix them into the training rows (same shape: ``{"messages": [user, assistant]}``) and the fine-tune
    keeps answering everyday questions as the base model did. Call it with the *base* model, before
    training. Answers cut at ``max_new_tokens`` are trimmed to their last whole sentence; empty answers,
    answers stuck in a loop ("The answer is: The answer is: …"), replies that only repeat the prompt, and wrong
    ones are left out: what is replayed is what the model should keep. A prompt in ``answers`` has a right answer
    only when its *first sentence* holds one of the keywords, and that sentence is what is replayed: an answer
    reached after a preamble ("To find half of 50, we need to divide …") would teach the preamble, which a short
    answer budget then cuts before the answer.
    """
    chosen = list(prompts if n is None else prompts[:n])
    if n is not None and n > len(prompts):
        raise ValueError(f"n={n} but there are only {len(prompts)} replay prompts.")
    asked = [[{"role": "user", "content": prompt}] for prompt in chosen]
    replies = generate(model, tokenizer, asked, max_new_tokens=max_new_tokens, batch_size=batch_size, desc="replay")
    rows = []
    for prompt, reply in zip(chosen, replies, strict=True):
        answer = _whole_sentences(reply)
        if prompt in answers:  # the first sentence, when it gives the answer; else nothing
            first = _first_sentence(answer)
            answer = first if keyword_match(first, answers[prompt]) else ""
        if answer and not _degenerate(answer) and _normal(answer) != _normal(prompt):
            rows.append(
                {
                    "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                    "replay": True,
                }
            )
    return rows
